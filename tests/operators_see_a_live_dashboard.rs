use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use alloy::signers::local::PrivateKeySigner;

use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::pay::{challenge, paid_get, sign_for};
use crate::support::settle::{settlement_yaml, PRICE};
use crate::support::{request, upstream_yaml, Levy, Origin};

const TOKEN: &str = "dashboard-test-token-0123456789";

/// Headless Chromium (Debian package `chromium`) on `url`, with `args` (`--dump-dom`,
/// `--screenshot=…`); its stdout.
fn chromium(url: &str, profile: &Path, args: &[&str]) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,1100",
            // Lets the page's fetches and first refreshes finish before the DOM is taken.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (Debian package chromium; tests/install.sh installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `GET path` on the admin listener with the token.
fn admin(levy: &Levy, path: &str) -> crate::support::Response {
    request(
        levy.admin,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
    )
}

/// The text of the element whose opening tag contains `marker`, up to its closing tag.
fn text_after(dom: &str, marker: &str) -> String {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the rendered page:\n{dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').expect("tag end") + 1;
    let end = rest[start..].find('<').expect("closing tag") + start;
    rest[start..end].to_owned()
}

#[test]
fn the_dashboard_renders_live_figures_in_a_headless_browser() {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 100 * PRICE);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, TOKEN).expect("token");
    // Without the funds check an unfunded payment is served, and then fails to settle.
    let levy = Levy::start(&format!(
        "{}{}{}  admin: {{token_file: {}}}\n  routes:\n    \
         - {{name: dash-feed, path: /data/*, amount: {PRICE}, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(dir.path(), "    max_delay_ms: 200\n    funds: {check: false}\n"),
        token_file.display(),
    ));
    let terms = challenge(&levy, "/data/x");
    for _ in 0..3 {
        let paid = request(
            levy.addr,
            &paid_get("/data/x", "PAYMENT-SIGNATURE", &sign_for(&terms, KEYS[0]).1),
        );
        assert_eq!(paid.status, 200, "{}", paid.text());
    }
    let unfunded = format!(
        "0x{}",
        alloy::hex::encode(PrivateKeySigner::random().to_bytes())
    );
    let served = request(
        levy.addr,
        &paid_get(
            "/data/x",
            "PAYMENT-SIGNATURE",
            &sign_for(&terms, &unfunded).1,
        ),
    );
    assert_eq!(served.status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let count = |state: &str| {
        admin(&levy, &format!("/settlements?state={state}")).json()["count"]
            .as_u64()
            .expect("count")
    };
    while count("settled") + count("failed") < 4 {
        assert!(Instant::now() < deadline, "the payments never became final");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The page is open (it holds no data); its data needs the token.
    let page = levy.admin_get("/dashboard");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-security-policy")
        .is_some_and(|csp| csp.contains("default-src 'none'")));
    assert!(
        !page.text().contains("src=\"http") && !page.text().contains("href=\"http"),
        "the page loads nothing from elsewhere"
    );
    assert_eq!(levy.admin_get("/dashboard/summary").status, 401);

    let profile = tempfile::tempdir().expect("profile");
    let url = format!("http://{}/dashboard", levy.admin);
    // Without the token the page asks for it.
    let locked = chromium(&url, profile.path(), &["--dump-dom"]);
    assert!(
        locked.contains("<section id=\"login\" class=\"\">"),
        "{locked}"
    );
    assert!(text_after(&locked, "id=\"status\"").contains("needs the admin token"));

    let dom = chromium(
        &format!("{url}#token={TOKEN}"),
        profile.path(),
        &["--dump-dom"],
    );
    assert!(dom.contains("data-loaded=\"true\""), "{dom}");
    assert!(dom.contains("<section id=\"login\" class=\"hidden\">"));
    // Revenue per route, from the journal: three settled, one failed.
    let row = &dom[dom
        .find("data-route=\"dash-feed\"")
        .expect("the route's row")..];
    assert_eq!(text_after(row, "data-field=\"payments\""), "4");
    assert_eq!(text_after(row, "data-field=\"settled\""), "0.003000");
    assert_eq!(text_after(row, "data-field=\"unsettled\""), "0.000000");
    assert_eq!(text_after(row, "data-field=\"failed\""), "0.001000");
    assert_eq!(text_after(&dom, "id=\"tile-settled\""), "0.003000");
    // Payments per state, and the failed one among the latest failures.
    let settled_bar = &dom[dom.find("id=\"state-settled\"").expect("bar")..];
    assert_eq!(text_after(settled_bar, "class=\"count\""), "3");
    let failed_bar = &dom[dom.find("id=\"state-failed\"").expect("bar")..];
    assert_eq!(text_after(failed_bar, "class=\"count\""), "1");
    let failed = admin(&levy, "/settlements?state=failed").json();
    let failed_id = failed["settlements"][0]["id"].as_str().expect("failed id");
    assert!(
        dom.contains(&format!("data-payment=\"{failed_id}\"")),
        "{dom}"
    );
    // Nothing is waiting: no lag.
    assert_eq!(text_after(&dom, "id=\"tile-lag\""), "0 s");
    assert_eq!(text_after(&dom, "id=\"tile-review\""), "0");

    let shot: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &format!("{url}#token={TOKEN}"),
        profile.path(),
        &[&format!("--screenshot={}", shot.display())],
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(png.len() > 20_000, "a {} byte screenshot", png.len());
    eprintln!("dashboard screenshot: {}", shot.display());
}

#[test]
fn the_dashboard_shows_amounts_in_the_decimals_of_the_asset_the_routes_charge() {
    let chain = TestChain::start();
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let levy = Levy::start(&format!(
        "{}{}  assets:\n    - {{name: tok, network: base-sepolia, address: \"0x5FbDB2315678afecb367f032d93F642f64180aa3\", \
         eip712_name: Tok, eip712_version: \"1\", decimals: 18}}\n{}  admin: {{token_file: {}}}\n  routes:\n    \
         - {{name: tok-feed, path: /data/*, amount: \"1000000000000000000\", accepts: [{{network: base-sepolia, asset: tok}}]}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(dir.path(), ""),
        token_file.display(),
    ));
    let summary = admin(&levy, "/dashboard/summary").json();
    assert_eq!(
        (summary["asset"].as_str(), summary["decimals"].as_u64()),
        (Some("tok"), Some(18))
    );

    let profile = tempfile::tempdir().expect("profile");
    let dom = chromium(
        &format!("http://{}/dashboard#token={TOKEN}", levy.admin),
        profile.path(),
        &["--dump-dom"],
    );
    assert!(dom.contains("data-loaded=\"true\""), "{dom}");
    assert_eq!(
        text_after(&dom, "id=\"units\""),
        "TOK (18 decimals), over the journal's retention period."
    );
    assert_eq!(
        text_after(&dom, "id=\"tile-settled\""),
        "0.000000000000000000"
    );
}
