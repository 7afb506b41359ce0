use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use alloy::primitives::B256;
use serde_json::Value;

use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::pay::{decode, paid_get};
use crate::support::settle::settlement_yaml;
use crate::support::{request, upstream_yaml, Levy, Origin, Reply, PAY_TO};

/// The official clients, as installed by `tests/interop/install.sh`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Client {
    /// `@x402/fetch` + `@x402/evm` (x402 v2, TypeScript).
    FetchV2,
    /// `x402-fetch` (x402 v1, TypeScript).
    FetchV1,
    /// `x402` on PyPI (v2, Python, requests).
    Python,
}

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Runs a client against `url` and returns what its script printed.
pub(crate) fn pay(client: Client, url: &str, env: &[(&str, &str)]) -> Value {
    let dir = interop_dir();
    assert!(
        dir.join("node_modules").exists() && dir.join(".venv/bin/python").exists(),
        "the official clients are not installed: run tests/interop/install.sh"
    );
    let mut command = match client {
        Client::FetchV2 => {
            let mut c = Command::new("node");
            c.arg("pay-v2.mjs");
            c
        }
        Client::FetchV1 => {
            let mut c = Command::new("node");
            c.arg("pay-v1.mjs");
            c
        }
        Client::Python => {
            let mut c = Command::new(dir.join(".venv/bin/python"));
            c.arg("pay.py");
            c
        }
    };
    command.arg(url).current_dir(&dir).env("PAYER_KEY", KEYS[0]);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("run the client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "{client:?} printed no JSON\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The authorization nonce inside a payment header a client sent.
fn nonce_of(header: &Value) -> B256 {
    let payload = decode(header.as_str().expect("sent payment header"));
    payload["payload"]["authorization"]["nonce"]
        .as_str()
        .expect("nonce")
        .parse()
        .expect("nonce hex")
}

struct Setup {
    chain: TestChain,
    levy: Levy,
    _origin: Origin,
    _dir: tempfile::TempDir,
}

fn setup(routes: &str) -> Setup {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 10_000_000);
    let origin = Origin::start(|_| Reply::ok(r#"{"forecast":"sunny"}"#));
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}{}{}  routes:\n{routes}",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(dir.path(), "    max_delay_ms: 200\n"),
    ));
    Setup {
        chain,
        levy,
        _origin: origin,
        _dir: dir,
    }
}

const WEATHER: &str = "    - {name: weather, path: /weather/*, price: \"$0.001\", accepts: [{network: base-sepolia}], description: Weather, mime_type: application/json}\n";

fn wait_used(chain: &TestChain, nonce: B256) {
    let payer = signer(KEYS[0]).address();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !chain.authorization_used(payer, nonce) {
        assert!(Instant::now() < deadline, "payment {nonce} never settled");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn a_client_pays_twice_settles_and_cannot_replay(client: Client, response_header: &str) {
    let s = setup(WEATHER);
    let url = format!("http://{}/weather/paris", s.levy.addr);
    let first = pay(client, &url, &[]);
    assert_eq!(first["status"], 200, "{first}");
    assert_eq!(first["body"], r#"{"forecast":"sunny"}"#);
    assert_eq!(first["paymentResponse"]["success"], true, "{first}");
    assert_eq!(
        first["paymentResponse"]["payer"]
            .as_str()
            .map(str::to_lowercase),
        Some(signer(KEYS[0]).address().to_string().to_lowercase())
    );

    let second = pay(client, &url, &[]);
    assert_eq!(second["status"], 200, "{second}");
    assert_ne!(
        first["sentPayment"], second["sentPayment"],
        "the client reused its payment"
    );

    for outcome in [&first, &second] {
        wait_used(&s.chain, nonce_of(&outcome["sentPayment"]));
    }

    let replay = request(
        s.levy.addr,
        &paid_get(
            "/weather/paris",
            response_header,
            first["sentPayment"].as_str().expect("header"),
        ),
    );
    assert_eq!(replay.status, 402);
    let refused = decode(replay.header("payment-required").expect("challenge"));
    assert_eq!(refused["error"], "invalid_exact_evm_nonce_already_used");
}

#[test]
fn the_v2_typescript_client_pays_settles_and_cannot_replay() {
    a_client_pays_twice_settles_and_cannot_replay(Client::FetchV2, "PAYMENT-SIGNATURE");
}

#[test]
fn the_v1_typescript_client_pays_settles_and_cannot_replay() {
    a_client_pays_twice_settles_and_cannot_replay(Client::FetchV1, "X-PAYMENT");
}

#[test]
fn the_python_client_pays_settles_and_cannot_replay() {
    a_client_pays_twice_settles_and_cannot_replay(Client::Python, "PAYMENT-SIGNATURE");
}

#[test]
fn clients_report_a_price_above_their_limit_a_wrong_network_and_an_expired_authorization() {
    let s = setup(
        "    - {name: dear, path: /dear, price: \"$0.50\", accepts: [{network: base-sepolia}]}\n    \
         - {name: elsewhere, path: /elsewhere, price: \"$0.001\", accepts: [{network: base}]}\n    \
         - {name: cheap, path: /cheap, price: \"$0.001\", accepts: [{network: base-sepolia}]}\n",
    );
    let base = format!("http://{}", s.levy.addr);

    let dear = pay(Client::FetchV1, &format!("{base}/dear"), &[]);
    eprintln!("v1 client facing $0.50 with its default $0.10 limit reports: {dear}");
    let message = dear["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        message.contains("exceeds") || message.contains("max"),
        "{dear}"
    );

    let elsewhere = pay(
        Client::FetchV2,
        &format!("{base}/elsewhere"),
        &[("X402_NETWORK", "eip155:84532")],
    );
    eprintln!(
        "v2 client paying only on base-sepolia, facing a base-only route, reports: {elsewhere}"
    );
    let message = elsewhere["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("eip155:8453") || message.to_lowercase().contains("no "),
        "{elsewhere}"
    );
    assert!(
        elsewhere["sentPayment"].is_null(),
        "the client paid on a network it does not use"
    );

    let expired = pay(
        Client::FetchV2,
        &format!("{base}/cheap"),
        &[
            ("NODE_OPTIONS", "--require ./fake-clock.cjs"),
            ("CLOCK_OFFSET_SECONDS", "-3600"),
        ],
    );
    eprintln!("v2 client whose authorization expired reports: {expired}");
    assert_eq!(expired["status"], 402, "{expired}");
    assert_eq!(
        expired["paymentRequired"]["error"],
        "invalid_exact_evm_payload_authorization_valid_before"
    );
}

fn levy_pay(url: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_levy"))
        .args(["pay", url])
        .env("LEVY_PAYER_KEY", KEYS[0])
        .output()
        .expect("run levy pay");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn levy_pay_pays_a_v2_route_and_the_payment_settles() {
    let s = setup(WEATHER);
    let (ok, report) = levy_pay(&format!("http://{}/weather/oslo", s.levy.addr));
    assert!(ok, "{report}");
    assert!(report.contains("-> 402 Payment Required"), "{report}");
    assert!(report.contains("asked (v2): 1000 atomic units"), "{report}");
    assert!(
        report.contains("with PAYMENT-SIGNATURE -> 200 OK"),
        "{report}"
    );
    assert!(report.contains(r#""success":true"#), "{report}");
    assert!(report.contains(r#"{"forecast":"sunny"}"#), "{report}");
    // This levy's own journal, not the metrics every levy in the test process shares.
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::support::settle::settlements_in(s.levy.admin, "settled") < 1 {
        assert!(
            Instant::now() < deadline,
            "levy pay's payment never settled"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        crate::support::settle::settlements_in(s.levy.admin, "settled"),
        1
    );
}

#[test]
fn levy_pay_falls_back_to_v1_when_the_server_only_speaks_v1() {
    use levy::config::Access;
    // A v1-only server: levy's own v1 challenge body without the v2 header, and full
    // verification of the X-PAYMENT it gets back.
    let config = levy::Config::from_yaml(&format!(
        "levy:\n  listeners: {{data: 127.0.0.1:1}}\n  upstreams: {{o: {{address: 127.0.0.1:2}}}}\n  pay_to: \"{PAY_TO}\"\n  routes:\n{WEATHER}"
    ))
    .expect("config");
    let (_, route) = config.routes.iter().next().expect("route");
    let Access::Priced(paywall) = &route.access else {
        panic!("priced")
    };
    let requirements = paywall.requirements.clone();
    let issued = paywall.challenge.accepts_v2().to_vec();
    let v1_body = paywall
        .challenge
        .render(
            "",
            "X-PAYMENT header is required",
            &levy::pricing::challenge::Asked {
                url: "http://v1.test/weather",
                path: "/weather",
            },
        )
        .v1_body;
    let server = Origin::start(move |seen| {
        match seen.header("x-payment") {
        None => Reply::Raw(
            [
                format!("HTTP/1.1 402 Payment Required\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", v1_body.len())
                    .into_bytes(),
                v1_body.clone(),
            ]
            .concat(),
        ),
        Some(header) => {
            let now = crate::support::pay::now();
            match levy::scheme::verify(header.as_bytes(), &requirements, &issued, now, &Default::default()) {
                Ok(v) if v.version == levy::verify::Version::V1 => Reply::ok("paid over v1"),
                other => Reply::status(400, format!("{other:?}")),
            }
        }
    }
    });
    let (ok, report) = levy_pay(&format!("http://{}/weather", server.addr));
    assert!(ok, "{report}");
    assert!(report.contains("asked (v1): 1000 atomic units"), "{report}");
    assert!(report.contains("with X-PAYMENT -> 200 OK"), "{report}");
    assert!(report.contains("paid over v1"), "{report}");
}
