use std::net::SocketAddr;

use crate::official_clients_pay_through_levy::{pay, Client};
use crate::support::pay::decode;
use crate::support::process::{process_config, spawn_levy, wait_listening};
use crate::support::tls::{curl, TestCa};
use crate::support::{free_port, request, upstream_yaml, Levy, Origin, Reply, PAY_TO};

/// A `tls:` listener block (continuing the harness's `listeners:`) serving `certs` in order.
fn tls_yaml(port: u16, certs: &[&crate::support::tls::Leaf]) -> String {
    let mut yaml = format!("    tls:\n      address: 127.0.0.1:{port}\n      certificates:\n");
    for leaf in certs {
        yaml.push_str(&format!(
            "        - {{cert: {}, key: {}}}\n",
            leaf.cert.display(),
            leaf.key.display()
        ));
    }
    yaml
}

const ROUTES: &str = "  routes:\n    \
    - {name: weather, path: /weather/*, price: \"$0.001\", pay_to: \"0x209693Bc6afc0C5328bA36FaF03C514EF312287C\", accepts: [{network: base-sepolia}]}\n    \
    - {name: free, path: /free/*, free: true}\n";

#[test]
fn a_tls_listener_serves_each_name_its_certificate_over_h2_and_http1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path());
    let a = ca.issue("a", &["DNS:a.levy.test", "DNS:localhost", "IP:127.0.0.1"]);
    let b = ca.issue("b", &["DNS:b.levy.test"]);
    let origin = Origin::echo();
    let port = free_port();
    let levy = Levy::start(&format!(
        "{}{}{ROUTES}",
        tls_yaml(port, &[&a, &b]),
        upstream_yaml(origin.addr)
    ));
    let tls = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(tls);

    for (name, http2, version) in [
        ("a.levy.test", true, "2"),
        ("a.levy.test", false, "1.1"),
        ("b.levy.test", true, "2"),
        ("b.levy.test", false, "1.1"),
    ] {
        let got = curl(&ca.cert, name, tls, "/free/x", http2, &[]);
        assert_eq!(got.exit, 0, "{name}: {got:?}");
        assert_eq!(
            (got.version.as_str(), got.status),
            (version, 200),
            "{name}: {got:?}"
        );
    }
    // A name no certificate has gets the first one, which the client rightly refuses.
    let unknown = curl(&ca.cert, "c.levy.test", tls, "/free/x", true, &[]);
    assert_eq!(
        unknown.exit, 60,
        "curl should fail verification: {unknown:?}"
    );

    // The origin learns the client came over TLS.
    let seen = origin.seen();
    assert!(seen
        .iter()
        .all(|s| s.header("x-forwarded-proto") == Some("https")));

    // x402 over h2: the same challenge, its resource URL on https.
    let challenge = curl(&ca.cert, "a.levy.test", tls, "/weather/paris", true, &[]);
    assert_eq!(
        (challenge.version.as_str(), challenge.status),
        ("2", 402),
        "{challenge:?}"
    );
    let header = challenge
        .headers
        .lines()
        .find_map(|l| l.strip_prefix("payment-required: "))
        .unwrap_or_else(|| panic!("no payment-required header: {}", challenge.headers));
    let required = decode(header.trim());
    assert_eq!(
        required["resource"]["url"],
        format!("https://a.levy.test:{port}/weather/paris")
    );
    assert_eq!(required["accepts"][0]["payTo"], PAY_TO);
    let body: serde_json::Value = serde_json::from_str(&challenge.body).expect("v1 body");
    assert_eq!(body["x402Version"], 1);

    // The plain listener still serves beside it.
    assert_eq!(levy.get("/free/x").status, 200);
}

#[test]
fn an_official_client_pays_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path());
    let a = ca.issue("a", &["DNS:localhost", "IP:127.0.0.1"]);
    let origin = Origin::start(|_| Reply::ok(r#"{"forecast":"sunny"}"#));
    let port = free_port();
    let _levy = Levy::start(&format!(
        "{}{}{ROUTES}",
        tls_yaml(port, &[&a]),
        upstream_yaml(origin.addr)
    ));
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
    let ca_path = ca.cert.display().to_string();
    let paid = pay(
        Client::FetchV2,
        &format!("https://127.0.0.1:{port}/weather/paris"),
        &[("NODE_EXTRA_CA_CERTS", ca_path.as_str())],
    );
    assert_eq!(paid["status"], 200, "{paid}");
    assert_eq!(paid["body"], r#"{"forecast":"sunny"}"#);
    assert_eq!(paid["paymentResponse"]["success"], true, "{paid}");
    assert_eq!(origin.seen().len(), 1);
}

#[test]
fn certificates_are_reloaded_without_a_restart_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path());
    let a = ca.issue("a", &["DNS:a.levy.test"]);
    let b = ca.issue("b", &["DNS:b.levy.test"]);
    let origin = Origin::echo();
    let port = free_port();
    let (config, _data, admin) = process_config(
        dir.path(),
        &format!(
            "{}{}{ROUTES}",
            tls_yaml(port, &[&a, &b]),
            upstream_yaml(origin.addr)
        ),
    );
    let _levy = spawn_levy(&config);
    let tls = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(tls);
    wait_listening(admin);
    assert_eq!(
        curl(&ca.cert, "c.levy.test", tls, "/free/x", true, &[]).exit,
        60
    );

    // The operator renews b's certificate with one more name, in place, and reloads.
    ca.issue("b", &["DNS:b.levy.test", "DNS:c.levy.test"]);
    let reload = request(
        admin,
        "POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(reload.status, 200, "{}", reload.text());
    let renewed = curl(&ca.cert, "c.levy.test", tls, "/free/x", true, &[]);
    assert_eq!((renewed.exit, renewed.status), (0, 200), "{renewed:?}");

    // A broken certificate file is refused by name; the ones served stay.
    std::fs::write(&b.cert, "not a certificate\n").expect("break the file");
    let refused = request(
        admin,
        "POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert!(
        refused
            .text()
            .contains("levy.listeners.tls.certificates[1]"),
        "{}",
        refused.text()
    );
    let still = curl(&ca.cert, "c.levy.test", tls, "/free/x", false, &[]);
    assert_eq!((still.exit, still.status), (0, 200), "{still:?}");
}
