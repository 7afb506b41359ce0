use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::{send, upstream_yaml, Levy, Origin, PAY_TO};

fn levy_with_priced_and_free(origin: &Origin) -> Levy {
    Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n  routes:\n    - {{name: paid, path: /paid, amount: 5, accepts: [{{network: base}}]}}\n    \
         - {{name: open, path: /*, free: true}}\n",
        upstream_yaml(origin.addr)
    ))
}

/// The status line's code, or `None` when levy closed without a response.
fn status_of(levy: &Levy, raw: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(levy.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = stream.write_all(raw);
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn still_serving(levy: &Levy) {
    assert_eq!(levy.get("/after").status, 200, "levy stopped serving");
    assert_eq!(levy.get("/paid").status, 402);
}

#[test]
fn a_64_kib_header_gets_a_4xx() {
    let origin = Origin::echo();
    let levy = levy_with_priced_and_free(&origin);
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: levy.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let status = status_of(&levy, raw.as_bytes()).expect("an answer to an oversize header");
    assert!((400..500).contains(&status), "status {status}");
    still_serving(&levy);
    assert!(origin.seen().iter().all(|s| s.target == "/after"));
}

#[test]
fn a_garbled_request_line_gets_a_4xx() {
    let origin = Origin::echo();
    let levy = levy_with_priced_and_free(&origin);
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    ] {
        let status = status_of(&levy, raw).unwrap_or_else(|| panic!("no answer to {raw:?}"));
        assert!((400..500).contains(&status), "status {status} for {raw:?}");
    }
    still_serving(&levy);
}

#[test]
fn a_header_with_invalid_bytes_gets_a_4xx() {
    let origin = Origin::echo();
    let levy = levy_with_priced_and_free(&origin);
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: levy.test\r\nX-Bad: a\x00b\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: levy.test\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: levy.test\r\nX-Bad: \x7f\x01\r\n\r\n",
    ] {
        let status = status_of(&levy, raw).unwrap_or_else(|| panic!("no answer to {raw:?}"));
        assert!((400..500).contains(&status), "status {status} for {raw:?}");
    }
    still_serving(&levy);
}

#[test]
fn a_client_that_hangs_up_mid_request_does_not_disturb_others() {
    let origin = Origin::echo();
    let levy = levy_with_priced_and_free(&origin);
    for _ in 0..20 {
        let mut stream = TcpStream::connect(levy.addr).expect("connect");
        let _ = stream.write_all(
            b"POST /x HTTP/1.1\r\nHost: levy.test\r\nContent-Length: 100000\r\n\r\npartial",
        );
    }
    let response =
        send(levy.addr, b"GET /fine HTTP/1.1\r\nHost: levy.test\r\n\r\n").expect("answer");
    assert_eq!(response.status, 200);
}
