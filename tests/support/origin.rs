//! A real HTTP/1.1 origin on loopback, one thread per connection, keep-alive aware. It
//! records every request exactly as it arrived and answers with what the test's handler
//! returns.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::client::{fill, read_chunked, read_head};

/// A request as the origin received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// Header lines in order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What the origin does with a request.
pub enum Reply {
    /// Writes these bytes as the response.
    Raw(Vec<u8>),
    /// Writes the head, then each chunk in chunked encoding with a pause between them.
    Chunked { head: String, chunks: Vec<Vec<u8>> },
    /// As `Chunked`, with `every` between chunks.
    Paced {
        head: String,
        chunks: Vec<Vec<u8>>,
        every: Duration,
    },
    /// Waits this long without answering, then closes.
    Stall(Duration),
}

impl Reply {
    /// `200 OK` with a body.
    pub fn ok(body: impl AsRef<[u8]>) -> Reply {
        Reply::status(200, body)
    }

    /// `200 OK` with a body of `content_type`.
    pub fn typed(content_type: &str, body: impl AsRef<[u8]>) -> Reply {
        let body = body.as_ref();
        let mut raw = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        Reply::Raw(raw)
    }

    /// A status with a body.
    pub fn status(code: u16, body: impl AsRef<[u8]>) -> Reply {
        let body = body.as_ref();
        let mut raw = format!(
            "HTTP/1.1 {code} Status\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        Reply::Raw(raw)
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A running origin; it lives until the test process ends.
pub struct Origin {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Origin {
    /// Starts an origin whose answers come from `handler`.
    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Origin {
        Origin::start_on(0, handler)
    }

    /// Starts an origin on loopback port `port` (0: any free one).
    pub fn start_on(port: u16, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (handler, log) = (Arc::clone(&handler), Arc::clone(&log));
                std::thread::spawn(move || serve(stream, &*handler, &log));
            }
        });
        Origin { addr, seen }
    }

    /// An origin that answers `200` with the request body echoed back.
    pub fn echo() -> Origin {
        Origin::start(|seen| Reply::ok(&seen.body))
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("origin log").clone()
    }

    /// The one request received so far; fails if there were more or none.
    pub fn only(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "origin saw {} requests", seen.len());
        seen.into_iter().next().expect("one request")
    }
}

fn serve(mut stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Seen>>) {
    let mut buf = Vec::new();
    while let Some(seen) = read_request(&mut stream, &mut buf) {
        log.lock().expect("origin log").push(seen.clone());
        let reply = handler(&seen);
        match reply {
            Reply::Raw(ref bytes) => {
                if stream.write_all(bytes).is_err() {
                    return;
                }
            }
            Reply::Chunked {
                ref head,
                ref chunks,
            }
            | Reply::Paced {
                ref head,
                ref chunks,
                ..
            } => {
                let every = match &reply {
                    Reply::Paced { every, .. } => *every,
                    _ => Duration::from_millis(20),
                };
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for chunk in chunks {
                    std::thread::sleep(every);
                    let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
                    frame.extend_from_slice(chunk);
                    frame.extend_from_slice(b"\r\n");
                    if stream.write_all(&frame).is_err() {
                        return;
                    }
                }
                if stream.write_all(b"0\r\n\r\n").is_err() {
                    return;
                }
            }
            Reply::Stall(wait) => {
                std::thread::sleep(wait);
                return;
            }
        }
    }
}

fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let head_end = read_head(stream, buf)?;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked(stream, buf)?
    } else {
        let len = get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < len {
            fill(stream, buf)?;
        }
        buf.drain(..len).collect()
    };
    Some(Seen {
        method,
        target,
        headers,
        body,
    })
}
