use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::pay::challenge_at;
use crate::support::process::{process_config, spawn_levy, wait_listening};
use crate::support::{request, send, upstream_yaml, Origin, Response};

fn routes(price: &str, extra: &str) -> String {
    format!(
        "  routes:\n    \
         - {{name: weather, path: /weather/*, price: \"{price}\", pay_to: \"0x209693Bc6afc0C5328bA36FaF03C514EF312287C\", accepts: [{{network: base-sepolia}}]}}\n    \
         - {{name: free, path: /free/*, free: true}}\n{extra}"
    )
}

fn post(admin: SocketAddr, path: &str) -> Response {
    request(
        admin,
        &format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"),
    )
}

fn amount(addr: SocketAddr) -> String {
    challenge_at(addr, "/weather/paris")["accepts"][0]["amount"]
        .as_str()
        .expect("amount")
        .to_owned()
}

/// Rewrites the `levy:` body of a process config in place, keeping its listeners.
fn rewrite(config: &std::path::Path, old: &str, new: &str) {
    let text = std::fs::read_to_string(config).expect("read config");
    assert!(text.contains(old), "{old} not in config");
    std::fs::write(config, text.replace(old, new)).expect("write config");
}

#[test]
fn a_reload_under_load_changes_a_price_with_zero_failed_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = Origin::echo();
    let body = format!("{}{}", upstream_yaml(origin.addr), routes("$0.001", ""));
    let (config, addr, admin) = process_config(dir.path(), &body);
    let _levy = spawn_levy(&config);
    wait_listening(addr);
    wait_listening(admin);
    assert_eq!(amount(addr), "1000");

    // Clients keep asking for the free and the priced route on fresh connections.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (path, want) = if i % 2 == 0 {
                        ("/free/x", 200)
                    } else {
                        ("/weather/paris", 402)
                    };
                    let raw = format!(
                        "GET {path} HTTP/1.1\r\nHost: levy.test\r\nConnection: close\r\n\r\n"
                    );
                    match send(addr, raw.as_bytes()) {
                        Some(r) if r.status == want => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(r) => failures
                            .lock()
                            .expect("lock")
                            .push(format!("{path}: {}", r.status)),
                        None => failures
                            .lock()
                            .expect("lock")
                            .push(format!("{path}: no response")),
                    }
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(300));
    rewrite(
        &config,
        &routes("$0.001", ""),
        &routes(
            "$0.002",
            "    - {name: added, path: /added/*, free: true}\n",
        ),
    );
    let reload = post(admin, "/reload");
    assert_eq!(reload.status, 200, "{}", reload.text());
    assert_eq!(reload.json()["routes"], 3);
    // The new table serves from the next request on.
    assert_eq!(amount(addr), "2000");
    assert_eq!(
        request(addr, "GET /added/x HTTP/1.1\r\nHost: levy.test\r\n\r\n").status,
        200
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().expect("load thread");
    }
    let failures = failures.lock().expect("lock");
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        done.load(Ordering::Relaxed) > 20,
        "too little load to mean anything"
    );

    let metrics = request(admin, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").text();
    assert!(
        metrics.contains("levy_config_reloads_total{outcome=\"applied\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_broken_config_is_refused_with_the_check_message_and_the_old_table_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = Origin::echo();
    let body = format!("{}{}", upstream_yaml(origin.addr), routes("$0.001", ""));
    let (config, addr, admin) = process_config(dir.path(), &body);
    let levy = spawn_levy(&config);
    wait_listening(addr);
    wait_listening(admin);

    // A payee with a bad EIP-55 checksum: what `levy check` says is what the reload says.
    let good = std::fs::read_to_string(&config).expect("read");
    rewrite(
        &config,
        "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        "0x209693bc6afc0C5328bA36FaF03C514EF312287C",
    );
    let check = Command::new(env!("CARGO_BIN_EXE_levy"))
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .expect("levy check");
    assert!(!check.status.success());
    let check_says = String::from_utf8_lossy(&check.stderr).trim().to_owned();
    let refused = post(admin, "/reload");
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert_eq!(refused.json()["error"], check_says.as_str());
    assert!(check_says.contains("levy.routes[0].pay_to"), "{check_says}");
    assert_eq!(amount(addr), "1000");

    // Keys a running levy cannot change are named.
    std::fs::write(
        &config,
        good.replace(
            "access_log: false",
            "access_log: false\n  state: {redis: {url: \"redis://127.0.0.1:1\"}}",
        ),
    )
    .expect("write");
    let fixed = post(admin, "/reload");
    assert_eq!(fixed.status, 422, "{}", fixed.text());
    let error = fixed.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("cannot change while levy runs"), "{error}");
    assert!(error.contains("levy.state"), "{error}");
    assert_eq!(amount(addr), "1000");

    // SIGHUP reloads too, once the file is right.
    std::fs::write(&config, good.replace("$0.001", "$0.005")).expect("write");
    levy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while amount(addr) != "5000" {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = request(admin, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").text();
    assert!(
        metrics.contains("levy_config_reloads_total{outcome=\"refused\"} 2"),
        "{metrics}"
    );
}

#[test]
fn the_admin_api_refuses_requests_without_its_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "s3cret-token-for-levy-admin";
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("write token");
    let origin = Origin::echo();
    let body = format!(
        "  admin: {{token_file: {}}}\n{}{}",
        token_file.display(),
        upstream_yaml(origin.addr),
        routes("$0.001", "")
    );
    let (config, addr, admin) = process_config(dir.path(), &body);
    let _levy = spawn_levy(&config);
    wait_listening(addr);
    wait_listening(admin);

    let ask = |method: &str, path: &str, authorization: Option<&str>| {
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        request(
            admin,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\r\n"
            ),
        )
    };
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/settlements"),
        ("POST", "/reload"),
    ] {
        let none = ask(method, path, None);
        assert_eq!(none.status, 401, "{method} {path}");
        assert!(none
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")));
        assert_eq!(
            ask(method, path, Some("Bearer wrong-token-of-the-same-len")).status,
            401
        );
        assert_eq!(
            ask(method, path, Some(token)).status,
            401,
            "no Bearer scheme"
        );
    }
    let bearer = format!("Bearer {token}");
    assert_eq!(ask("GET", "/metrics", Some(&bearer)).status, 200);
    assert_eq!(ask("POST", "/reload", Some(&bearer)).status, 200);
    // Probes stay open: an orchestrator has no token.
    assert_eq!(ask("GET", "/healthz", None).status, 200);
    assert_eq!(ask("GET", "/readyz", None).status, 200);
}
