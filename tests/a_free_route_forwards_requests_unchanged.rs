use std::io::Write;
use std::net::TcpStream;

use crate::support::{client::read_response, request, upstream_yaml, Levy, Origin, Reply};

fn free_levy(origin: &Origin) -> Levy {
    Levy::start(&format!(
        "{}  routes:\n    - name: open\n      path: /*\n      free: true\n",
        upstream_yaml(origin.addr)
    ))
}

#[test]
fn a_one_mebibyte_post_reaches_the_origin_and_comes_back_byte_for_byte() {
    let origin = Origin::echo();
    let levy = free_levy(&origin);
    let body: Vec<u8> = (0..1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut raw = format!(
        "POST /upload HTTP/1.1\r\nHost: levy.test\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let response = crate::support::send(levy.addr, &raw).expect("a response");
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), body.len());
    assert!(
        response.body == body,
        "response body differs from what was sent"
    );
    let seen = origin.only();
    assert_eq!(seen.method, "POST");
    assert!(seen.body == body, "origin received a different body");
    assert_eq!(
        seen.header("content-type"),
        Some("application/octet-stream")
    );
}

#[test]
fn a_chunked_request_body_streams_through() {
    let origin = Origin::echo();
    let levy = free_levy(&origin);
    let raw = "POST /c HTTP/1.1\r\nHost: levy.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let response = request(levy.addr, raw);
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello world");
    assert_eq!(origin.only().body, b"hello world");
}

#[test]
fn a_chunked_response_arrives_chunked_with_every_byte() {
    let chunks: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("chunk-{i};").repeat(100).into_bytes())
        .collect();
    let expected: Vec<u8> = chunks.concat();
    let origin = Origin::start(move |_| Reply::Chunked {
        head: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            .into(),
        chunks: chunks.clone(),
    });
    let levy = free_levy(&origin);
    let response = levy.get("/stream");
    assert_eq!(response.status, 200);
    assert!(
        response.chunked,
        "levy buffered a streamed response: {:?}",
        response.headers
    );
    assert_eq!(response.body, expected);
}

#[test]
fn the_query_string_and_repeated_headers_pass_in_both_directions() {
    let origin = Origin::start(|_| {
        Reply::Raw(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Multi: one\r\nX-Multi: two\r\nContent-Length: 2\r\n\r\nok".to_vec())
    });
    let levy = free_levy(&origin);
    let target = "/search?q=caf%C3%A9&tag=a&tag=b&empty=&flag";
    let response = crate::support::request(
        levy.addr,
        &format!("GET {target} HTTP/1.1\r\nHost: levy.test\r\nX-Rep: first\r\nX-Rep: second\r\nAccept: */*\r\n\r\n"),
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.headers_named("set-cookie"), ["a=1", "b=2"]);
    assert_eq!(response.headers_named("x-multi"), ["one", "two"]);
    let seen = origin.only();
    assert_eq!(seen.target, target);
    assert_eq!(seen.headers_named("x-rep"), ["first", "second"]);
    assert_eq!(seen.header("host"), Some("levy.test"));
}

#[test]
fn forwarding_headers_are_set_and_payment_and_hop_by_hop_headers_are_not_forwarded() {
    let origin = Origin::start(|_| {
        Reply::Raw(b"HTTP/1.1 200 OK\r\nConnection: X-Origin-Hop\r\nX-Origin-Hop: secret\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\nContent-Length: 0\r\n\r\n".to_vec())
    });
    let levy = free_levy(&origin);
    let response = request(
        levy.addr,
        "GET /h HTTP/1.1\r\nHost: shop.example:8080\r\nX-Forwarded-For: 203.0.113.7\r\n\
         PAYMENT-SIGNATURE: abc\r\nX-PAYMENT: def\r\nConnection: keep-alive, X-Client-Hop\r\nX-Client-Hop: 1\r\n\
         Keep-Alive: timeout=9\r\nX-End: kept\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-kept"), Some("yes"));
    assert_eq!(response.header("x-origin-hop"), None);
    assert_eq!(response.header("keep-alive"), None);
    let seen = origin.only();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.example:8080"));
    assert_eq!(seen.header("payment-signature"), None);
    assert_eq!(seen.header("x-payment"), None);
    assert_eq!(seen.header("x-client-hop"), None);
    assert_eq!(seen.header("keep-alive"), None);
    assert_eq!(seen.header("x-end"), Some("kept"));
}

#[test]
fn an_upstream_host_rewrite_replaces_the_host_header() {
    let origin = Origin::echo();
    let levy = Levy::start(&format!(
        "  upstreams:\n    origin:\n      address: {}\n      host: internal.api\n  routes:\n    - name: open\n      path: /*\n      free: true\n",
        origin.addr
    ));
    assert_eq!(levy.get("/x").status, 200);
    let seen = origin.only();
    assert_eq!(seen.header("host"), Some("internal.api"));
    assert_eq!(seen.header("x-forwarded-host"), Some("levy.test"));
}

#[test]
fn a_keep_alive_connection_serves_several_requests() {
    let origin = Origin::echo();
    let levy = free_levy(&origin);
    let mut stream = TcpStream::connect(levy.addr).expect("connect");
    for i in 0..3 {
        let body = format!("request {i}");
        write!(
            stream,
            "POST /k HTTP/1.1\r\nHost: levy.test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let response = read_response(&mut stream).expect("response");
        assert_eq!(response.text(), body);
    }
    assert_eq!(origin.seen().len(), 3);
}
