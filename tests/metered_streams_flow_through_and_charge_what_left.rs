//! Metered responses as streams: levy passes a large body through without holding it, a
//! client that leaves halfway pays for what was flushed to it, and an origin that knows its
//! own usage reports it in a header (or, over HTTP/2, a trailer) that levy reads and strips.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use alloy::primitives::U256;

use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::client::read_head;
use crate::support::origin::Reply;
use crate::support::pay::{upto_payment, upto_payment_until};
use crate::support::process::{process_config, spawn_levy, wait_listening};
use crate::support::settle::{settlement_yaml, wait_settled};
use crate::support::{upstream_yaml, Levy, Origin, PAY_TO};

/// The ceiling of every metered route here: far above what any test charges.
const CEILING: u64 = 200_000;

/// A route metered by `meter` (a YAML flow mapping's inner text) at `path`.
fn route(name: &str, path: &str, meter: &str) -> String {
    format!(
        "    - name: {name}\n      path: {path}\n      accepts: [{{network: base-sepolia}}]\n      \
         meter: {{{meter}, ceiling: \"{CEILING}\"}}\n"
    )
}

/// The chain with an approved, funded payer (`KEYS[0]`), and levy's config body for
/// `routes` in front of `origin`, settling each payment at once.
fn chain_and_config(origin: &Origin, dir: &std::path::Path, routes: &str) -> (TestChain, String) {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 10_000_000);
    chain.approve_permit2(KEYS[0]);
    let yaml = format!(
        "{}{}{}  routes:\n{routes}",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(dir, "    max_batch: 1\n    max_delay_ms: 10\n"),
    );
    (chain, yaml)
}

/// [`chain_and_config`] for a `/ticks` route charging `price` a record.
fn ticks_config(origin: &Origin, dir: &std::path::Path, price: u64) -> (TestChain, String) {
    chain_and_config(
        origin,
        dir,
        &route(
            "ticks",
            "/ticks",
            &format!("unit: records, price: \"{price}\""),
        ),
    )
}

/// `yaml` made to take authorizations that expire 20 s from now: allowed that short, and
/// batches of up to 10, so levy projects a drain fast enough to settle them in time.
fn short_lived(yaml: &str) -> String {
    yaml.replace("max_batch: 1\n", "max_batch: 10\n").replace(
        "  routes:\n",
        "  payments:\n    valid_before_margin_seconds: 15\n  routes:\n",
    )
}

/// Sends a paid `GET path` and reads the response head; returns the stream (positioned at
/// the body), the status and the header lines.
fn paid_stream(addr: SocketAddr, path: &str) -> (TcpStream, u16, String, Vec<u8>) {
    paid_stream_with(addr, path, upto_payment(addr, path, KEYS[0]))
}

/// As [`paid_stream`], paid with `payment`.
fn paid_stream_with(
    addr: SocketAddr,
    path: &str,
    payment: String,
) -> (TcpStream, u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: levy.test\r\nPAYMENT-SIGNATURE: {payment}\r\n\r\n"
    )
    .expect("send");
    let mut head = Vec::new();
    let end = read_head(&mut stream, &mut head).expect("levy answers with a head");
    let rest = head.split_off(end + 4);
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (stream, status, text, rest)
}

/// Waits until one payment settled; returns what the payee received.
fn one_settlement(chain: &TestChain, admin: SocketAddr) -> U256 {
    wait_settled(admin, 1);
    chain.balance(PAY_TO.parse().expect("pay_to"))
}

/// The body of the `/bulk` origin: 50 MiB.
const BULK_SIZE: usize = 50 << 20;

/// An origin serving [`BULK_SIZE`] bytes, and the chain and levy's config for a `/bulk`
/// route charging one atomic unit per KiB delivered.
fn bulk(dir: &std::path::Path) -> (Origin, TestChain, String) {
    let origin = Origin::start(|_| Reply::ok(vec![b'x'; BULK_SIZE]));
    let (chain, yaml) = chain_and_config(
        &origin,
        dir,
        &route("bulk", "/bulk", "unit: bytes, per: 1024, price: \"1\""),
    );
    (origin, chain, yaml)
}

#[test]
fn a_client_that_stops_reading_is_cut_off_after_the_write_timeout_and_pays_what_it_received() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_origin, chain, yaml) = bulk(dir.path());
    let yaml = yaml.replace(
        "  routes:\n",
        "  client_write_timeout_ms: 1000\n  routes:\n",
    );
    let (config, addr, admin) = process_config(dir.path(), &yaml);
    let _levy = spawn_levy(&config);
    wait_listening(addr);

    let (stream, status, head, _) = paid_stream(addr, "/bulk");
    assert_eq!(status, 200, "{head}");
    // The client reads nothing more and keeps its connection open. Without a write
    // timeout levy's writes would wait on it for ever and the charge would never close.
    let paid = one_settlement(&chain, admin);
    assert!(
        paid > U256::ZERO && paid < U256::from(51_200 / 2),
        "the payee received {paid}: what reached the client's socket, not the 50 MiB"
    );
    drop(stream);
}

#[test]
fn a_50_mib_metered_stream_passes_through_with_levys_memory_flat() {
    const SIZE: usize = BULK_SIZE;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_origin, chain, yaml) = bulk(dir.path());
    let (config, addr, admin) = process_config(dir.path(), &yaml);
    let levy = spawn_levy(&config);
    wait_listening(addr);

    // Warm levy up with a small paid response, then note its memory.
    let (warm, status, _, _) = paid_stream(addr, "/bulk");
    assert_eq!(status, 200);
    // Closed, not only shut down: a socket left open with its reads shut keeps its window
    // full, so levy's writes would wait on it and the warm-up's charge would never close.
    drop(warm);
    std::thread::sleep(Duration::from_millis(200));
    let (before, _) = levy.memory_kib();

    let (mut stream, status, head, rest) = paid_stream(addr, "/bulk");
    assert_eq!(status, 200, "{head}");
    let mut received = rest.len();
    let mut buf = vec![0u8; 256 * 1024];
    while received < SIZE {
        let n = stream.read(&mut buf).expect("read the body");
        assert!(n > 0, "the stream ended after {received} bytes");
        received += n;
    }
    // (What came off the wire: the body, and its chunk framing.)
    assert!(received >= SIZE);
    let (_, peak) = levy.memory_kib();
    eprintln!("levy resident: {before} KiB before a 50 MiB metered stream, {peak} KiB at peak");
    assert!(
        peak < before + 16 * 1024,
        "levy grew from {before} KiB to {peak} KiB while streaming 50 MiB: it buffers"
    );
    // 51 200 KiB, at one atomic unit each, for the stream (the warm-up paid its own part).
    wait_settled(admin, 2);
    let paid = chain.balance(PAY_TO.parse().expect("pay_to"));
    assert!(
        paid >= U256::from(51_200) && paid <= U256::from(51_200 + 51_200),
        "the payee received {paid}"
    );
}

#[test]
fn a_metered_stream_ends_in_time_for_its_charge_to_settle_before_the_permit2_deadline() {
    // One record every 250 ms for 40 s: far longer than the authorization lasts.
    const PRICE: u64 = 7;
    let origin = ticking(160, Duration::from_millis(250));
    let dir = tempfile::tempdir().expect("tempdir");
    let (chain, yaml) = ticks_config(&origin, dir.path(), PRICE);
    let yaml = short_lived(&yaml);
    let levy = Levy::start(&yaml);

    // Settling takes max_delay (10 ms, a second rounded up) plus 12 s to be mined: the
    // stream must end 13 s before the deadline, here 7 s after it starts.
    let started = std::time::Instant::now();
    let deadline = crate::support::pay::now() + 20;
    let payment = upto_payment_until(levy.addr, "/ticks", KEYS[0], Some(deadline));
    let (mut stream, status, head, mut body) = paid_stream_with(levy.addr, "/ticks", payment);
    assert_eq!(status, 200, "{head}");
    // The origin goes on: levy drops what follows its end and then closes the connection.
    stream.read_to_end(&mut body).expect("the stream ends");
    let lasted = started.elapsed();
    let records = records_in(&body);
    eprintln!("the stream ended after {lasted:?} with {records} records");
    assert!(
        lasted < Duration::from_secs(12),
        "the stream ran for {lasted:?}, too close to its deadline for the charge to settle"
    );
    assert!((10..=40).contains(&records), "{records} records delivered");
    assert_eq!(
        records,
        count(&body, b"{\"tick\""),
        "the stream ended inside a record"
    );

    let charged = one_settlement(&chain, levy.admin);
    assert_eq!(
        charged,
        U256::from(records as u64 * PRICE),
        "the charge is not the records delivered"
    );
    assert!(
        crate::support::pay::now() < deadline,
        "settled only after the deadline"
    );
}

#[test]
fn a_client_that_leaves_halfway_pays_for_what_was_flushed_to_it() {
    // 16 MiB in 256 chunks of 64 KiB, 20 ms apart: five seconds to stream in full.
    let origin = Origin::start(|_| Reply::Chunked {
        head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
        chunks: vec![vec![b'x'; 64 * 1024]; 256],
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (chain, yaml) = chain_and_config(
        &origin,
        dir.path(),
        &route("slow", "/slow", "unit: bytes, per: 1024, price: \"1\""),
    );
    let levy = Levy::start(&yaml);

    let (mut stream, status, head, rest) = paid_stream(levy.addr, "/slow");
    assert_eq!(status, 200, "{head}");
    let mut read = rest.len();
    let mut buf = vec![0u8; 64 * 1024];
    while read < 1 << 20 {
        let n = stream.read(&mut buf).expect("read the body");
        assert!(n > 0, "the stream ended early");
        read += n;
    }
    drop(stream);

    let charged = one_settlement(&chain, levy.admin);
    let read_kib = (read / 1024) as u64;
    eprintln!("a client that read {read_kib} KiB of 16 MiB was charged {charged}");
    assert!(
        charged >= U256::from(read_kib),
        "charged {charged} for {read_kib} KiB read"
    );
    assert!(
        charged <= U256::from(4 * 1024),
        "charged {charged} for a stream left after {read_kib} KiB: more than was flushed"
    );
}

#[test]
fn an_origin_that_reports_its_usage_in_a_header_is_charged_that_and_the_header_is_stripped() {
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nX-Usage-Tokens: 37\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        )
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (chain, yaml) = chain_and_config(
        &origin,
        dir.path(),
        &route(
            "llm",
            "/llm",
            "unit: origin, header: x-usage-tokens, price: \"3\"",
        ),
    );
    let levy = Levy::start(&yaml);
    let (mut stream, status, head, mut body) = paid_stream(levy.addr, "/llm");
    assert_eq!(status, 200, "{head}");
    read_to_last_chunk(&mut stream, &mut body);
    // A metered body goes chunked (levy may end it early), keep-alive kept.
    assert_eq!(body, b"5\r\nhello\r\n0\r\n\r\n");
    assert!(
        !head.to_ascii_lowercase().contains("x-usage-tokens"),
        "the usage header reached the client: {head}"
    );
    assert_eq!(one_settlement(&chain, levy.admin), U256::from(37 * 3));
}

#[test]
fn an_origin_that_reports_its_usage_in_an_http2_trailer_is_charged_that() {
    let origin = crate::support::h2_origin::H2Origin::start(
        b"a long answer",
        &[("x-usage-tokens", "250"), ("x-other", "kept")],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 10_000_000);
    chain.approve_permit2(KEYS[0]);
    let levy = Levy::start(&format!(
        "  upstreams:\n    origin:\n      address: {}\n      http2: true\n{}{}  routes:\n{}",
        origin.addr,
        chain.levy_yaml(),
        settlement_yaml(dir.path(), "    max_batch: 1\n    max_delay_ms: 10\n"),
        route(
            "llm",
            "/llm",
            "unit: origin, header: x-usage-tokens, price: \"3\""
        ),
    ));
    let (mut stream, status, head, mut body) = paid_stream(levy.addr, "/llm");
    assert_eq!(status, 200, "{head}");
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&body).contains("\r\n0\r\n") {
        let n = stream.read(&mut buf).expect("read the body");
        assert!(n > 0, "the body ended without its last chunk");
        body.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(text.contains("a long answer"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("x-usage-tokens"),
        "the usage trailer reached the client: {text}"
    );
    assert_eq!(one_settlement(&chain, levy.admin), U256::from(250 * 3));
}

#[test]
fn a_client_that_leaves_before_the_origins_report_pays_the_last_report_or_the_unreported_share() {
    // Both origins stream 40 chunks, 100 ms apart; one reported 37 units in a header before
    // its body, the other reports only at the end (a trailer that never comes in time).
    let origin = Origin::start(|seen| {
        let header = if seen.target.starts_with("/told") {
            "X-Usage-Tokens: 37\r\n"
        } else {
            ""
        };
        Reply::Paced {
            head: format!("HTTP/1.1 200 OK\r\n{header}Transfer-Encoding: chunked\r\n\r\n"),
            chunks: vec![b"token ".to_vec(); 40],
            every: Duration::from_millis(100),
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (chain, yaml) = chain_and_config(
        &origin,
        dir.path(),
        &format!(
            "{}{}",
            route(
                "told",
                "/told",
                "unit: origin, header: x-usage-tokens, price: \"3\""
            ),
            route(
                "untold",
                "/untold",
                "unit: origin, header: x-usage-tokens, price: \"3\", unreported: \"50%\""
            ),
        ),
    );
    let levy = Levy::start(&yaml);
    let payee: alloy::primitives::Address = PAY_TO.parse().expect("pay_to");
    let mut paid = U256::ZERO;
    for (path, expected) in [
        ("/told", U256::from(37 * 3)),
        ("/untold", U256::from(CEILING / 2)),
    ] {
        let (mut stream, status, head, mut body) = paid_stream(levy.addr, path);
        assert_eq!(status, 200, "{head}");
        while !String::from_utf8_lossy(&body).contains("token") {
            let mut buf = [0u8; 256];
            let n = stream.read(&mut buf).expect("read the body");
            assert!(n > 0, "the body ended early");
            body.extend_from_slice(&buf[..n]);
        }
        drop(stream);
        let settled = if path == "/told" { 1 } else { 2 };
        wait_settled(levy.admin, settled);
        let now = chain.balance(payee);
        assert_eq!(now - paid, expected, "{path}: a client that left early");
        paid = now;
    }
}

/// An origin that sends `records` NDJSON lines, one every `every`.
fn ticking(records: usize, every: Duration) -> Origin {
    Origin::start(move |_| Reply::Paced {
        head: "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
               Transfer-Encoding: chunked\r\n\r\n"
            .into(),
        chunks: (0..records)
            .map(|i| format!("{{\"tick\":{i}}}\n").into_bytes())
            .collect(),
        every,
    })
}

/// Reads a chunked body on `stream` into `body` through its last (empty) chunk: the
/// connection stays open for the next request.
fn read_to_last_chunk(stream: &mut TcpStream, body: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    while !body.ends_with(b"0\r\n\r\n") {
        let n = stream.read(&mut buf).expect("read the body");
        assert!(n > 0, "the response ended without its last chunk");
        body.extend_from_slice(&buf[..n]);
    }
}

/// How often `needle` occurs in `haystack`.
fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// The whole NDJSON records (`{…}` and its newline) in a response body as it came off the
/// wire, chunk framing and all (a chunk-size line never holds a `}`).
fn records_in(body: &[u8]) -> usize {
    count(body, b"}\n")
}

/// Reads a response body until `records` lines came (or the stream ends); returns them.
fn read_records(stream: &mut TcpStream, mut body: Vec<u8>, records: usize) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    while records_in(&body) < records {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    body
}

#[test]
fn a_levy_killed_mid_stream_charges_that_stream_after_restart_and_refuses_its_authorization() {
    const PRICE: u64 = 11;
    let origin = ticking(200, Duration::from_millis(100));
    let dir = tempfile::tempdir().expect("tempdir");
    let (chain, yaml) = ticks_config(&origin, dir.path(), PRICE);
    let (config, addr, admin) = process_config(dir.path(), &yaml);
    let mut levy = spawn_levy(&config);
    wait_listening(addr);

    let payment = upto_payment(addr, "/ticks", KEYS[0]);
    let (mut stream, status, head, body) = paid_stream_with(addr, "/ticks", payment.clone());
    assert_eq!(status, 200, "{head}");
    let body = read_records(&mut stream, body, 30);
    // A checkpoint a second: let one cover the 30 records read.
    std::thread::sleep(Duration::from_millis(1500));
    levy.sigkill();
    let read = records_in(&body) as u64;
    drop(stream);
    let before = chain.balance(PAY_TO.parse().expect("pay_to"));
    assert_eq!(before, U256::ZERO, "something settled before the kill");

    let _levy = spawn_levy(&config);
    wait_listening(addr);
    let charged = one_settlement(&chain, admin);
    eprintln!("read {read} records before levy was killed; charged {charged} after restart");
    assert!(
        charged >= U256::from(read * PRICE),
        "charged {charged} for at least {read} records delivered"
    );
    assert!(
        charged <= U256::from((read + 30) * PRICE),
        "charged {charged}: far more than the {read} records delivered by the kill"
    );

    // The same authorization buys nothing after the restart.
    let (_, status, head, _) = paid_stream_with(addr, "/ticks", payment);
    assert_eq!(status, 402, "{head}");
}

#[test]
fn an_origin_gone_quiet_past_the_cut_off_is_charged_what_it_delivered_before_the_deadline() {
    const PRICE: u64 = 13;
    // Ten records 6 s in, then nothing until 12 s in: the response's cut-off (7 s in, see
    // above) passes while the origin is quiet, and levy takes the charge itself 2 s later.
    let origin = Origin::start(|_| Reply::Paced {
        head: "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
               Transfer-Encoding: chunked\r\n\r\n"
            .into(),
        chunks: vec![
            (0..10)
                .map(|i| format!("{{\"tick\":{i}}}\n"))
                .collect::<String>()
                .into_bytes(),
            b"{\"tick\":\"late\"}\n".to_vec(),
        ],
        every: Duration::from_secs(6),
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (chain, yaml) = ticks_config(&origin, dir.path(), PRICE);
    let yaml = short_lived(&yaml).replace("read_timeout_ms: 1000", "read_timeout_ms: 60000");
    let levy = Levy::start(&yaml);

    let deadline = crate::support::pay::now() + 20;
    let payment = upto_payment_until(levy.addr, "/ticks", KEYS[0], Some(deadline));
    let (mut stream, status, head, body) = paid_stream_with(levy.addr, "/ticks", payment);
    assert_eq!(status, 200, "{head}");
    let charged = one_settlement(&chain, levy.admin);
    assert!(
        crate::support::pay::now() < deadline,
        "settled only after the deadline"
    );
    assert_eq!(charged, U256::from(10 * PRICE), "the ten records delivered");
    let mut body = body;
    read_to_last_chunk(&mut stream, &mut body);
    assert_eq!(
        records_in(&body),
        10,
        "a record after the charge was taken reached the client"
    );
}
