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
