//! A JSON-RPC proxy in front of the test chain whose receipts and logs lag its state: a
//! transaction's receipt and its logs are served only `lag` after the proxy first saw them,
//! while `eth_call`, balances and nonces are current. Some providers behave so (their nodes
//! answer state and receipts from different replicas). It can also refuse methods, as nodes
//! that lack them do, fail one method for a while the ways hosted endpoints fail ([`Fault`]),
//! answer `eth_call`s for the latest block from an older one (a node behind), and counts the
//! calls of each method.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{fill, read_head, read_response};

/// The proxy; it serves until the test process ends.
pub struct LaggingRpc {
    pub url: String,
    calls: Calls,
    faults: Faults,
    behind: Behind,
}

/// How a call fails while a fault is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 429, as a rate-limited endpoint answers.
    TooManyRequests,
    /// HTTP 502, as an endpoint behind a failing load balancer answers.
    BadGateway,
    /// The connection is closed without an answer.
    Reset,
    /// No answer for this long, then the connection is closed.
    Stall(Duration),
    /// HTTP 200 with a body that is not JSON-RPC.
    Malformed,
}

type FirstSeen = Arc<Mutex<HashMap<String, Instant>>>;
type Calls = Arc<Mutex<HashMap<String, usize>>>;
/// The fault each method gets, until when, and how many of its calls came meanwhile.
type Faults = Arc<Mutex<HashMap<String, (Fault, Instant, usize)>>>;
/// The block `eth_call`s for the latest one are answered at, while set.
type Behind = Arc<Mutex<Option<u64>>>;

impl LaggingRpc {
    /// Proxies to the node at `upstream` (`http://host:port`).
    pub fn start(upstream: &str, lag: Duration) -> LaggingRpc {
        Self::refusing(upstream, lag, &[])
    }

    /// The same, answering each of `refused` with JSON-RPC's "method not found".
    pub fn refusing(upstream: &str, lag: Duration, refused: &[&str]) -> LaggingRpc {
        Self::refusing_with(upstream, lag, refused, -32601)
    }

    /// The same, answering each of `refused` with the JSON-RPC error `code` (-32601 is
    /// "method not found"; another code is a node that will not run the request as made).
    pub fn refusing_with(upstream: &str, lag: Duration, refused: &[&str], code: i64) -> LaggingRpc {
        let target: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("upstream address");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = FirstSeen::default();
        let calls = Calls::default();
        let counted = Arc::clone(&calls);
        let faults = Faults::default();
        let planned = Arc::clone(&faults);
        let behind = Behind::default();
        let pinned = Arc::clone(&behind);
        let refused: Arc<Vec<String>> = Arc::new(refused.iter().map(|m| m.to_string()).collect());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let seen = Arc::clone(&seen);
                let calls = Arc::clone(&counted);
                let refused = Arc::clone(&refused);
                let faults = Arc::clone(&planned);
                let behind = Arc::clone(&pinned);
                std::thread::spawn(move || {
                    let served = Served {
                        seen: &seen,
                        calls: &calls,
                        refused: &refused,
                        refusal: code,
                        faults: &faults,
                        behind: &behind,
                    };
                    serve(client, target, lag, &served)
                });
            }
        });
        LaggingRpc {
            url,
            calls,
            faults,
            behind,
        }
    }

    /// Answers `eth_call`s for the latest block at `block` instead (a node that is behind),
    /// until called with `None`.
    pub fn stay_at(&self, block: Option<u64>) {
        *self.behind.lock().expect("behind") = block;
    }

    /// Fails every other call of `method` (the first included) with `fault` for the next
    /// `period`, then heals: a flaky endpoint, whose failures land between calls that work.
    pub fn inject(&self, method: &str, fault: Fault, period: Duration) {
        self.faults
            .lock()
            .expect("faults")
            .insert(method.to_owned(), (fault, Instant::now() + period, 0));
    }

    /// How many times `method` was called through the proxy so far.
    pub fn calls(&self, method: &str) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .get(method)
            .copied()
            .unwrap_or(0)
    }
}

/// What every connection of the proxy shares.
struct Served<'a> {
    seen: &'a FirstSeen,
    calls: &'a Calls,
    refused: &'a [String],
    /// The JSON-RPC error code `refused` methods get.
    refusal: i64,
    faults: &'a Faults,
    behind: &'a Behind,
}

/// Serves one keep-alive connection.
fn serve(mut client: TcpStream, target: SocketAddr, lag: Duration, served: &Served) {
    let Served {
        seen,
        calls,
        refused,
        refusal,
        faults,
        behind,
    } = served;
    let mut buf = Vec::new();
    loop {
        let Some(body) = read_request(&mut client, &mut buf) else {
            return;
        };
        let mut request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let pinned = *behind.lock().expect("behind");
        let body = match pinned {
            Some(block) if request["method"] == "eth_call" && request["params"][1] == "latest" => {
                request["params"][1] = Value::String(format!("0x{block:x}"));
                request.to_string().into_bytes()
            }
            _ => body,
        };
        let method = request["method"].as_str().unwrap_or_default().to_owned();
        *calls
            .lock()
            .expect("calls")
            .entry(method.clone())
            .or_default() += 1;
        let fault = faults
            .lock()
            .expect("faults")
            .get_mut(&method)
            .filter(|(_, until, _)| Instant::now() < *until)
            .and_then(|(fault, _, calls)| {
                *calls += 1;
                (*calls % 2 == 1).then_some(*fault)
            });
        let failed = match fault {
            None => None,
            Some(Fault::TooManyRequests) => {
                Some(("429 Too Many Requests", b"rate limited".to_vec()))
            }
            Some(Fault::BadGateway) => {
                Some(("502 Bad Gateway", b"<html>bad gateway</html>".to_vec()))
            }
            Some(Fault::Malformed) => Some(("200 OK", b"{\"jsonrpc\": \"2.0\", \"id\": ".to_vec())),
            Some(Fault::Reset) => return,
            Some(Fault::Stall(period)) => {
                std::thread::sleep(period);
                return;
            }
        };
        if let Some((status, body)) = failed {
            if !answer(&mut client, status, &body) {
                return;
            }
            continue;
        }
        let reply = if refused.contains(&method) {
            serde_json::json!({
                "jsonrpc": "2.0",
                "id": request["id"],
                "error": if *refusal == -32601 {
                    serde_json::json!({"code": -32601, "message": format!("the method {method} does not exist/is not available")})
                } else {
                    serde_json::json!({"code": refusal, "message": "invalid argument 0: json: cannot unmarshal"})
                },
            })
            .to_string()
            .into_bytes()
        } else {
            let Some(answer) = forward(target, &body) else {
                return;
            };
            delay_receipts(&method, answer, lag, seen)
        };
        if !answer(&mut client, "200 OK", &reply) {
            return;
        }
    }
}

/// Writes one JSON answer with `status`; whether the client took it.
fn answer(client: &mut TcpStream, status: &str, body: &[u8]) -> bool {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client
        .write_all(head.as_bytes())
        .and_then(|()| client.write_all(body))
        .is_ok()
}

/// The body of the next request on the connection (`Content-Length` framed).
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let head_end = read_head(stream, buf)?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + 4 + len {
        fill(stream, buf)?;
    }
    let body = buf[head_end + 4..head_end + 4 + len].to_vec();
    buf.drain(..head_end + 4 + len);
    Some(body)
}

fn forward(target: SocketAddr, body: &[u8]) -> Option<Vec<u8>> {
    let mut upstream = TcpStream::connect(target).ok()?;
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {target}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    upstream.write_all(head.as_bytes()).ok()?;
    upstream.write_all(body).ok()?;
    read_response(&mut upstream).map(|r| r.body)
}

/// Hides receipts and logs of transactions first seen less than `lag` ago.
fn delay_receipts(method: &str, answer: Vec<u8>, lag: Duration, seen: &FirstSeen) -> Vec<u8> {
    let Ok(mut answer_json) = serde_json::from_slice::<Value>(&answer) else {
        return answer;
    };
    let hidden = |hash: &str| {
        let mut seen = seen.lock().expect("seen");
        let first = *seen
            .entry(hash.to_ascii_lowercase())
            .or_insert_with(Instant::now);
        first.elapsed() < lag
    };
    match method {
        "eth_getTransactionReceipt" => {
            let hash = answer_json["result"]["transactionHash"]
                .as_str()
                .map(str::to_owned);
            if hash.is_some_and(|h| hidden(&h)) {
                answer_json["result"] = Value::Null;
            }
        }
        "eth_getLogs" => {
            if let Some(logs) = answer_json["result"].as_array_mut() {
                logs.retain(|log| !log["transactionHash"].as_str().is_some_and(hidden));
            }
        }
        _ => return answer,
    }
    answer_json.to_string().into_bytes()
}
