use std::process::Command;

use crate::support::{upstream_yaml, Levy, Origin, PAY_TO};

#[test]
fn levy_check_accepts_the_example_config_and_prints_the_route_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_levy"))
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/levy.example.yaml"),
        ])
        .output()
        .expect("run levy check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("weather"), "{stdout}");
    assert!(stdout.contains("1000 usdc@base-sepolia"), "{stdout}");
    assert!(stdout.contains("unmatched requests: 404"), "{stdout}");
    assert!(
        stdout.contains(
            "discoverable: weather, reports (listed at /.well-known/x402 and /openapi.json"
        ),
        "{stdout}"
    );
}

#[test]
fn levy_check_names_the_key_and_the_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "levy:\n  listeners: {data: 127.0.0.1:1}\n  upstreams: {o: {address: 127.0.0.1:2}}\n  routes:\n    \
         - {name: r, path: /r, price: \"$0.01\", pay_to: \"0x209693bc6afc0C5328bA36FaF03C514EF312287C\", accepts: [{network: base}]}\n",
    )
    .expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_levy"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .expect("run levy check");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("levy.routes[0].pay_to"), "{stderr}");
    assert!(stderr.contains("bad EIP-55 checksum"), "{stderr}");
}

#[test]
fn running_with_a_broken_config_exits_non_zero_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("typo.yaml");
    std::fs::write(
        &file,
        "levy:\n  listeners: {data: 127.0.0.1:1}\n  upstreams: {}\n  routs: []\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_levy"))
        .arg("-c")
        .arg(&file)
        .output()
        .expect("run levy");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field `routs`"), "{stderr}");
    assert!(stderr.contains("line 4"), "{stderr}");
}

#[test]
fn metrics_count_requests_by_route_and_outcome() {
    let origin = Origin::echo();
    let levy = Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n  routes:\n    - {{name: metered, path: /m, amount: 3, accepts: [{{network: base}}]}}\n    \
         - {{name: metered-free, path: /f, free: true}}\n",
        upstream_yaml(origin.addr)
    ));
    for _ in 0..3 {
        assert_eq!(levy.get("/m").status, 402);
    }
    assert_eq!(levy.get("/f").status, 200);
    for (line, value) in [
        (
            r#"levy_requests_total{outcome="payment_required",route="metered"}"#,
            3,
        ),
        (
            r#"levy_requests_total{outcome="forwarded",route="metered-free"}"#,
            1,
        ),
        (r#"levy_challenges_total{route="metered"}"#, 3),
        (
            r#"levy_request_duration_seconds_count{outcome="payment_required",route="metered"}"#,
            3,
        ),
    ] {
        levy.metric_reaches(line, value);
    }
}

#[test]
fn health_and_readiness_answer_on_the_admin_listener() {
    let origin = Origin::echo();
    let levy = Levy::start(&format!("{}  routes: []\n", upstream_yaml(origin.addr)));
    assert_eq!(levy.admin_get("/healthz").status, 200);
    assert_eq!(levy.admin_get("/readyz").status, 200);
    assert_eq!(levy.admin_get("/nope").status, 404);
}

#[test]
fn a_browser_page_cannot_drive_or_read_an_admin_api_without_a_token() {
    let origin = Origin::echo();
    let levy = Levy::start(&format!(
        "{}  admin:\n    hosts: [levy-admin.internal]\n  routes: []\n",
        upstream_yaml(origin.addr)
    ));
    let call = |head: &str| crate::support::request(levy.admin, &format!("{head}\r\n\r\n"));
    // A page on a name rebound to levy's address (DNS rebinding) reads nothing.
    let rebound = call("GET /metrics HTTP/1.1\r\nHost: attacker.example:9180");
    assert_eq!(rebound.status, 421, "{}", rebound.text());
    // A cross-site page's form or fetch cannot reload or claim.
    let forged = call(
        "POST /reload HTTP/1.1\r\nHost: localhost\r\nOrigin: https://attacker.example\r\nContent-Length: 0",
    );
    assert_eq!(forged.status, 403, "{}", forged.text());
    let forged = call(
        "POST /reload HTTP/1.1\r\nHost: localhost\r\nSec-Fetch-Site: cross-site\r\nContent-Length: 0",
    );
    assert_eq!(forged.status, 403, "{}", forged.text());
    // Operators' own tools are answered: by address, by localhost, by a configured name.
    for host in [
        "127.0.0.1:9180",
        "localhost",
        "[::1]:9180",
        "levy-admin.internal",
    ] {
        let r = call(&format!("GET /healthz HTTP/1.1\r\nHost: {host}"));
        assert_eq!(r.status, 200, "{host}: {}", r.text());
    }
    let scripted = call("POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0");
    assert_ne!(scripted.status, 403, "{}", scripted.text());
    assert_ne!(scripted.status, 421, "{}", scripted.text());
}

/// The `levy_*` metric names `text` mentions (histogram series suffixes removed).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("levy_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(name.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_alert_rules_pass_their_promtool_tests_and_name_only_metrics_levy_exports() {
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    let out = Command::new("promtool")
        .args(["test", "rules", "levy-alerts.test.yml"])
        .current_dir(format!("{deploy}/prometheus"))
        .output()
        .expect("promtool (Debian package prometheus; tests/install.sh installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let exported = metric_names(include_str!("../src/metrics.rs"));
    for file in ["prometheus/levy-alerts.yml", "grafana/levy-dashboard.json"] {
        let text = std::fs::read_to_string(format!("{deploy}/{file}")).expect("read");
        let used = metric_names(&text);
        assert!(used.len() >= 5, "{file} names {used:?}");
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics levy does not export: {unknown:?}"
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{deploy}/grafana/levy-dashboard.json")).expect("read"),
    )
    .expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().expect("panels").len() >= 10);
}

#[test]
fn the_container_image_and_the_helm_chart_ship_configs_that_levy_check_accepts() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().expect("tempdir");
    for file in [
        "conf/levy.container.yaml",
        "deploy/helm/levy/files/levy.yaml",
    ] {
        // The upstream is a name only the container's network resolves, and the volume is
        // the pod's: checked here against loopback and a temp dir, everything else as shipped.
        let text = std::fs::read_to_string(format!("{root}/{file}"))
            .expect("read")
            .replace("origin:9000", "127.0.0.1:9000")
            .replace("/var/lib/levy", &dir.path().display().to_string());
        let copy = dir.path().join("levy.yaml");
        std::fs::write(&copy, text).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_levy"))
            .args(["check", "-c"])
            .arg(&copy)
            .env("LEVY_ADMIN_TOKEN", "a-token-for-the-check-0123")
            .output()
            .expect("run levy check");
        assert!(
            out.status.success(),
            "{file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The image: built in one stage, run in another as a non-root user, checking its config
    // before it starts.
    let dockerfile =
        std::fs::read_to_string(format!("{root}/deploy/docker/Dockerfile")).expect("Dockerfile");
    assert_eq!(dockerfile.matches("\nFROM ").count(), 2);
    assert!(dockerfile.contains("\nUSER 10001:10001\n"));
    assert!(dockerfile.contains("levy check -c \\\"$LEVY_CONFIG\\\" && exec levy"));
    // The chart checks the config in an init container and probes the admin listener.
    let deployment =
        std::fs::read_to_string(format!("{root}/deploy/helm/levy/templates/deployment.yaml"))
            .expect("deployment");
    assert!(deployment.contains("command: [\"levy\", \"check\", \"-c\", \"/etc/levy/levy.yaml\"]"));
    assert!(deployment.contains("path: /healthz") && deployment.contains("path: /readyz"));
}
