//! levy's load tool: drives one URL over K keep-alive connections for a fixed time and
//! reports throughput, latency percentiles, errors and the CPU time a process (levy) spent per
//! request. With `--pay` it first pre-signs N unique x402 payments offline (from the URL's
//! own 402 challenge: its first requirement, EIP-3009 for `exact`, a Permit2 ceiling for
//! `upto`) and sends a different one with every request. For `batch-settlement` each
//! connection opens its own channel: one deposit per channel before the clock starts (levy
//! submits it on chain), then N / connections cumulative vouchers, one per request.
//!
//!     cargo run --release --example load -- --url http://127.0.0.1:8080/x --connections 16 \
//!         --seconds 10 [--pay --payments 200000 --key 0x…] [--pid PID] [--expect 200] \
//!         [--rate REQUESTS_PER_SECOND]
//!
//! Without `--rate` each connection sends its next request as soon as the previous answer
//! arrives (closed loop: the server is saturated, and by Little's law latency is about
//! connections / throughput). With `--rate` the connections together send that many requests
//! per second on a fixed schedule (open loop below saturation: latency is the server's
//! service time plus whatever it waits on, such as a journal sync); a request is sent on
//! schedule or, if the previous answer came late, right after it.
//!
//! Prints one JSON object.

#[path = "common/cpu.rs"]
mod cpu;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy_primitives::B256;
use levy::client::{channel::Channel, random_nonce, sign, upto, Payer, Terms};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    url: String,
    connections: usize,
    seconds: u64,
    pay: bool,
    payments: usize,
    key: String,
    pid: Option<u32>,
    expect: u16,
    rate: Option<f64>,
}

fn args() -> Args {
    let mut a = Args {
        url: String::new(),
        connections: 16,
        seconds: 10,
        pay: false,
        payments: 200_000,
        key: "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80".into(),
        pid: None,
        expect: 200,
        rate: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = value(),
            "--connections" => a.connections = value().parse().expect("--connections"),
            "--seconds" => a.seconds = value().parse().expect("--seconds"),
            "--pay" => a.pay = true,
            "--payments" => a.payments = value().parse().expect("--payments"),
            "--key" => a.key = value(),
            "--pid" => a.pid = Some(value().parse().expect("--pid")),
            "--expect" => a.expect = value().parse().expect("--expect"),
            "--rate" => a.rate = Some(value().parse().expect("--rate")),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.url.is_empty(), "--url is required");
    a
}

/// `host:port` and path of an `http://` URL.
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    (host.to_owned(), format!("/{path}"))
}

/// Reads more of the response into `buf`; `None` when the connection ended.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16384];
    let n = stream.read(&mut chunk).await.ok()?;
    if n == 0 {
        return None;
    }
    buf.extend_from_slice(&chunk[..n]);
    Some(())
}

/// Where a chunked body that starts at `at` in `buf` ends (after its last, empty chunk),
/// reading more as needed.
async fn chunked_end(stream: &mut TcpStream, buf: &mut Vec<u8>, mut at: usize) -> Option<usize> {
    loop {
        let line_end = loop {
            if let Some(p) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                break at + p;
            }
            read_more(stream, buf).await?;
        };
        let size_text = std::str::from_utf8(&buf[at..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        let next = line_end + 2 + size + 2;
        while buf.len() < next {
            read_more(stream, buf).await?;
        }
        at = next;
        if size == 0 {
            return Some(at);
        }
    }
}

/// Reads one response (its body by `Content-Length`, or chunked); returns its status.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).ok()?;
            let status: u16 = head.get(9..12)?.parse().ok()?;
            let chunked = head.lines().any(|l| {
                l.split_once(':').is_some_and(|(n, v)| {
                    n.eq_ignore_ascii_case("transfer-encoding")
                        && v.trim().eq_ignore_ascii_case("chunked")
                })
            });
            if chunked {
                let total = chunked_end(stream, buf, end + 4).await?;
                buf.drain(..total);
                return Some(status);
            }
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + len;
            while buf.len() < total {
                let mut chunk = [0u8; 16384];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..total);
            return Some(status);
        }
        let mut chunk = [0u8; 16384];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn challenge_of(host: &str, path: &str) -> serde_json::Value {
    let mut stream = TcpStream::connect(host)
        .await
        .expect("connect for the challenge");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.expect("read");
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let value = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("payment-required: ")
                .or_else(|| l.strip_prefix("PAYMENT-REQUIRED: "))
        })
        .expect("the URL answers a 402 with PAYMENT-REQUIRED");
    let json = levy::x402::decode_header(value.trim().as_bytes()).expect("base64");
    serde_json::from_slice(&json).expect("JSON")
}

fn presign(challenge: &serde_json::Value, key: &str, count: usize) -> Vec<String> {
    let accepted = challenge["accepts"][0].clone();
    let terms = Terms::from_v2(&accepted).expect("terms");
    let payer = Payer::from_hex(key).expect("key");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let timeout = accepted["maxTimeoutSeconds"].as_u64().unwrap_or(300);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per = count.div_ceil(threads);
    let upto = accepted["scheme"] == "upto";
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (terms, payer, accepted) = (terms.clone(), payer.clone(), accepted.clone());
            std::thread::spawn(move || {
                (0..per)
                    .map(|_| {
                        if upto {
                            let facilitator = upto::facilitator(&accepted).expect("facilitator");
                            let deadline = now + timeout - 30;
                            let nonce = upto::random_permit2_nonce();
                            upto::sign_upto(&payer, &terms, facilitator, deadline, nonce)
                                .expect("sign")
                                .v2_header(&accepted)
                        } else {
                            sign(&payer, &terms, now - 600, now + timeout, random_nonce())
                                .expect("sign")
                                .v2_header(&accepted, None)
                        }
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("signer"))
        .take(count)
        .collect()
}

/// What each connection sends: its own channel's vouchers (after a deposit sent before the
/// clock starts), or a share of one pool of single-use payments.
enum Payments {
    None,
    Pool(Vec<String>),
    Channels {
        deposits: Vec<String>,
        vouchers: Vec<Vec<String>>,
    },
}

impl Payments {
    fn of(challenge: &serde_json::Value, key: &str, count: usize, connections: usize) -> Self {
        let accepted = &challenge["accepts"][0];
        if accepted["scheme"] == levy::x402::SCHEME_BATCH {
            let (deposits, vouchers) = channels(accepted, key, count, connections);
            Payments::Channels { deposits, vouchers }
        } else {
            Payments::Pool(presign(challenge, key, count))
        }
    }
}

/// One channel per connection: its deposit (carrying the voucher for the first request, and
/// enough for all of them) and `count / connections` more vouchers, cumulative.
fn channels(
    accepted: &serde_json::Value,
    key: &str,
    count: usize,
    connections: usize,
) -> (Vec<String>, Vec<Vec<String>>) {
    let payer = Payer::from_hex(key).expect("key");
    let price: u128 = accepted["amount"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("amount");
    let min_deposit: u128 = accepted["extra"]["minDeposit"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let per = count.div_ceil(connections) as u128;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let handles: Vec<_> = (0..connections)
        .map(|_| {
            let (payer, accepted) = (payer.clone(), accepted.clone());
            std::thread::spawn(move || {
                let channel = Channel::open(&payer, &accepted, B256::random()).expect("channel");
                let amount = ((per + 1) * price).max(min_deposit);
                let deposit = channel
                    .deposit(amount, price, now - 600, now + 3600)
                    .expect("sign");
                let vouchers = (2..=per + 1)
                    .map(|k| channel.voucher(k * price).expect("sign"))
                    .collect::<Vec<_>>();
                (deposit, vouchers)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("signer"))
        .unzip()
}

/// Sends `payment` once on a fresh connection; panics unless the answer is 200.
async fn pay_once(host: &str, path: &str, payment: &str) {
    let mut stream = TcpStream::connect(host).await.expect("connect");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nPAYMENT-SIGNATURE: {payment}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let status = read_response(&mut stream, &mut Vec::new()).await;
    assert_eq!(status, Some(200), "a channel deposit was refused");
}

/// Microseconds per libsecp256k1 public-key recovery, measured here and now, so that paid
/// CPU can be expressed in recoveries from the same run.
fn recover_us() -> f64 {
    let secret = alloy_primitives::B256::repeat_byte(7);
    let digests: Vec<_> = (0..2000u32)
        .map(|i| alloy_primitives::keccak256(i.to_be_bytes()))
        .collect();
    let sigs: Vec<_> = digests
        .iter()
        .map(|d| alloy_consensus::crypto::secp256k1::sign_message(secret, *d).expect("sign"))
        .collect();
    let started = Instant::now();
    for (s, d) in sigs.iter().zip(&digests) {
        std::hint::black_box(alloy_consensus::crypto::secp256k1::recover_signer(s, *d).ok());
    }
    started.elapsed().as_secs_f64() * 1e6 / digests.len() as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let a = args();
    let recover = recover_us();
    let (host, path) = split_url(&a.url);
    let payments = if a.pay {
        let challenge = challenge_of(&host, &path).await;
        Payments::of(&challenge, &a.key, a.payments, a.connections)
    } else {
        Payments::None
    };
    // Channels are funded before the clock starts: the deposits go on chain.
    let (pool, mut vouchers) = match payments {
        Payments::None => (Vec::new(), Vec::new()),
        Payments::Pool(pool) => (pool, Vec::new()),
        Payments::Channels { deposits, vouchers } => {
            let sends: Vec<_> = deposits
                .into_iter()
                .map(|d| {
                    let (host, path) = (host.clone(), path.clone());
                    tokio::spawn(async move { pay_once(&host, &path, &d).await })
                })
                .collect();
            for send in sends {
                send.await.expect("deposit");
            }
            (Vec::new(), vouchers)
        }
    };
    let payments = Arc::new(pool);
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let cpu_before = a.pid.map(cpu::cpu_seconds);
    let started = Instant::now();
    // Each connection's gap between scheduled sends, and its offset, so the connections
    // together send evenly.
    let gap = a
        .rate
        .map(|r| Duration::from_secs_f64(a.connections as f64 / r));
    let tasks: Vec<_> = (0..a.connections)
        .map(|c| {
            let (host, path, payments, next) = (
                host.clone(),
                path.clone(),
                Arc::clone(&payments),
                Arc::clone(&next),
            );
            let expect = a.expect;
            let own = (c < vouchers.len()).then(|| std::mem::take(&mut vouchers[c]));
            tokio::spawn(async move {
                let mut own = own.map(Vec::into_iter);
                let mut latencies = Vec::with_capacity(100_000);
                let (mut ok, mut errors) = (0u64, 0u64);
                let mut stream = TcpStream::connect(&host).await.ok();
                let mut buf = Vec::with_capacity(32 * 1024);
                let mut due = gap.map(|g| started + g.mul_f64(c as f64 / a.connections as f64));
                while Instant::now() < deadline {
                    if let (Some(at), Some(g)) = (due.as_mut(), gap) {
                        tokio::time::sleep_until((*at).into()).await;
                        *at += g;
                    }
                    let Some(s) = stream.as_mut() else {
                        errors += 1;
                        stream = TcpStream::connect(&host).await.ok();
                        continue;
                    };
                    let request = if let Some(own) = own.as_mut() {
                        let Some(p) = own.next() else { break };
                        format!(
                            "GET {path} HTTP/1.1\r\nHost: {host}\r\nPAYMENT-SIGNATURE: {p}\r\n\r\n"
                        )
                    } else if payments.is_empty() {
                        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
                    } else {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(p) = payments.get(i) else { break };
                        format!(
                            "GET {path} HTTP/1.1\r\nHost: {host}\r\nPAYMENT-SIGNATURE: {p}\r\n\r\n"
                        )
                    };
                    let sent = Instant::now();
                    let status = match s.write_all(request.as_bytes()).await {
                        Ok(()) => read_response(s, &mut buf).await,
                        Err(_) => None,
                    };
                    match status {
                        Some(code) if code == expect => {
                            ok += 1;
                            latencies.push(sent.elapsed().as_micros() as u32);
                        }
                        Some(_) => errors += 1,
                        None => {
                            errors += 1;
                            buf.clear();
                            stream = TcpStream::connect(&host).await.ok();
                        }
                    }
                }
                (latencies, ok, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let (mut ok, mut errors) = (0u64, 0u64);
    for t in tasks {
        let (l, o, e) = t.await.expect("connection task");
        latencies.extend(l);
        ok += o;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = a
        .pid
        .zip(cpu_before)
        .map(|(pid, before)| cpu::cpu_seconds(pid) - before);
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let report = serde_json::json!({
        "url": a.url,
        "connections": a.connections,
        "seconds": elapsed,
        "requests": ok,
        "errors": errors,
        "rps": ok as f64 / elapsed,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "cpu_us_per_request": cpu.map(|c| c * 1e6 / ok.max(1) as f64),
        "recover_us": recover,
    });
    println!("{report}");
}
