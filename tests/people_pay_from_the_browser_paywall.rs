use std::path::Path;
use std::time::Duration;

use alloy::primitives::U256;
use serde_json::Value;

use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::interop::{run_script, Runtime};
use crate::support::settle::{settlement_yaml, settlements_in, wait_all_final, PRICE};
use crate::support::{upstream_yaml, Levy, Origin, Reply, PAY_TO};

/// A shop: levy settling on a fresh chain in front of `origin`, its priced route dressed as
/// a shop's, and payer key 0 holding `balance` atomic units.
struct Shop {
    chain: TestChain,
    levy: Levy,
    _dir: tempfile::TempDir,
}

fn shop(origin: &Origin, balance: u64) -> Shop {
    shop_selling(
        origin,
        balance,
        &format!(
            "{{name: browser-report, path: /reports/*, amount: {PRICE}, description: \"Today's market report\", \
             accepts: [{{network: base-sepolia}}]}}"
        ),
    )
}

/// [`shop`] with its one route written as `route` (a YAML flow map).
fn shop_selling(origin: &Origin, balance: u64, route: &str) -> Shop {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), balance);
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}{}{}  paywall: {{title: \"Acme reports\", accent_color: \"#0b5d3b\"}}\n  routes:\n    - {route}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(dir.path(), "    max_delay_ms: 200\n"),
    ));
    Shop {
        chain,
        levy,
        _dir: dir,
    }
}

fn json_origin() -> Origin {
    Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 29\r\n\r\n{\"report\":\"sunny\",\"index\":42}"
                .to_vec(),
        )
    })
}

/// A person opens `path` in Chromium with a test wallet holding payer key 0 and clicks
/// through; screenshots go to the test's target dir as `<shots>-402.png` and
/// `<shots>-paid.png` (or `-rejected.png`).
fn browse(shop: &Shop, path: &str, wallet: &str, shots: &str) -> Value {
    let (levy, chain) = (&shop.levy, &shop.chain);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join(shots);
    let report = run_script(
        Runtime::Node,
        "browser-pay.mjs",
        &[
            &format!("http://{}{path}", levy.addr),
            &chain.rpc_url,
            KEYS[0],
            &shots.display().to_string(),
            wallet,
        ],
        &[],
    );
    eprintln!("browser: {report}");
    report
}

/// What axe-core found that a person would trip over (serious or critical).
fn serious(report: &Value) -> Vec<&Value> {
    report["axe"]
        .as_array()
        .expect("axe ran")
        .iter()
        .filter(|v| v["impact"] == "serious" || v["impact"] == "critical")
        .collect()
}

#[test]
fn a_person_with_a_wallet_buys_the_resource_from_the_402_page_and_it_settles() {
    let origin = json_origin();
    let shop = shop(&origin, 10 * PRICE);
    let (levy, chain) = (&shop.levy, &shop.chain);

    let report = browse(&shop, "/reports/today", "sign", "paywall");
    assert_eq!(report["status"], 402);
    assert!(report["csp"]
        .as_str()
        .is_some_and(|csp| csp.starts_with("default-src 'none'; script-src 'sha256-")));
    assert_eq!(report["title"], "Acme reports");
    assert_eq!(report["prices"][0], "0.001 USDC on base-sepolia");
    assert_eq!(report["walletButton"], "Connect Test Wallet and pay");
    // It ran under its own policy: nothing was blocked, nothing failed.
    assert_eq!(report["cspViolations"], serde_json::json!([]), "{report}");
    let errors: Vec<&Value> = report["consoleErrors"]
        .as_array()
        .expect("console")
        .iter()
        .filter(|e| !e.as_str().is_some_and(|e| e.contains("status of 402")))
        .collect();
    assert!(errors.is_empty(), "{report}");
    // The wallet was asked for the typed data the official clients sign.
    let signed = &report["signed"];
    assert_eq!(signed["primaryType"], "TransferWithAuthorization");
    assert_eq!(signed["domain"]["chainId"], 84532);
    assert_eq!(signed["message"]["value"], PRICE.to_string());
    assert_eq!(
        signed["message"]["to"].as_str().map(str::to_lowercase),
        Some(PAY_TO.to_lowercase())
    );

    assert_eq!(report["paid"], true, "{report}");
    assert_eq!(report["resultStatus"], "Paid. The response:");
    assert_eq!(
        report["result"],
        "{\n  \"report\": \"sunny\",\n  \"index\": 42\n}"
    );
    assert_eq!(report["focused"], "x402-result-status");
    let id = report["paymentId"].as_str().expect("payment id");
    assert!(id.starts_with("pay_"), "{report}");
    assert!(report["statusUrl"]
        .as_str()
        .is_some_and(|u| u.ends_with(&format!("/_levy/settlements/{id}"))));
    assert_eq!(
        origin.seen().len(),
        1,
        "the origin served the paid request only"
    );

    // The payment settles on chain.
    wait_all_final(levy.admin, Duration::from_secs(30));
    assert_eq!(settlements_in(levy.admin, "settled"), 1);
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(PRICE)
    );

    // The basics of accessibility: no serious axe-core finding, and Tab reaches the choice,
    // the wallet button and the "paying from code" details in reading order.
    assert!(serious(&report).is_empty(), "{}", report["axe"]);
    let tabs: Vec<&str> = report["tabOrder"]
        .as_array()
        .expect("tab order")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(tabs[0], "x402-accept-0", "{tabs:?}");
    assert!(
        tabs[1].starts_with("button:Connect Test Wallet"),
        "{tabs:?}"
    );
    assert!(tabs[2].starts_with("summary:Paying from code"), "{tabs:?}");
    for shot in ["paywall-402.png", "paywall-paid.png"] {
        let png =
            std::fs::read(Path::new(env!("CARGO_TARGET_TMPDIR")).join(shot)).expect("screenshot");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{shot}");
    }
}

#[test]
fn a_person_who_rejects_the_signature_is_told_so_and_pays_nothing() {
    let origin = json_origin();
    let shop = shop(&origin, 10 * PRICE);
    let levy = &shop.levy;

    let report = browse(&shop, "/reports/today", "reject", "paywall-rejecting");
    assert_eq!(report["status"], 402);
    assert_eq!(report["paid"], false, "{report}");
    assert_eq!(
        report["message"],
        "You rejected the request in your wallet. Nothing was paid."
    );
    assert!(origin.seen().is_empty());
    assert_eq!(settlements_in(levy.admin, "pending"), 0);
    assert_eq!(settlements_in(levy.admin, "settled"), 0);
}

#[test]
fn a_paid_html_page_is_shown_in_a_sandboxed_frame() {
    let origin = Origin::start(|_| {
        let page = "<!doctype html><h1>Market report</h1><p>Up 3%</p><script>document.title='ran'</script>";
        Reply::Raw(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{page}",
                page.len()
            )
            .into_bytes(),
        )
    });
    let shop = shop(&origin, 10 * PRICE);

    let report = browse(&shop, "/reports/html", "sign", "paywall-html");
    assert_eq!(report["paid"], true, "{report}");
    assert_eq!(
        report["frames"],
        serde_json::json!(["Market report\n\nUp 3%"]),
        "{report}"
    );
    assert_eq!(report["cspViolations"], serde_json::json!([]), "{report}");
}

#[test]
fn a_payment_settled_before_a_failing_origin_is_reported_as_paid_not_as_nothing() {
    let origin = Origin::start(|_| Reply::status(500, "the report generator is down"));
    let shop = shop_selling(
        &origin,
        10 * PRICE,
        &format!(
            "{{name: browser-report, path: /reports/*, amount: {PRICE}, settle: before_response, \
             accepts: [{{network: base-sepolia}}]}}"
        ),
    );

    let report = browse(&shop, "/reports/today", "sign", "paywall-origin-down");
    assert_eq!(
        report["resultStatus"], "Paid, but the server answered 500.",
        "{report}"
    );
    assert_eq!(report["paid"], true, "{report}");
    assert_eq!(
        shop.chain.balance(PAY_TO.parse().expect("pay_to")),
        alloy::primitives::U256::from(PRICE),
        "the payment settled before the origin failed"
    );
}

#[test]
fn a_wallet_without_enough_usdc_is_told_its_balance_before_it_signs() {
    let origin = json_origin();
    let shop = shop(&origin, PRICE / 2);

    let report = browse(&shop, "/reports/today", "sign", "paywall-poor");
    assert_eq!(report["paid"], false, "{report}");
    assert_eq!(
        report["message"],
        "This wallet holds 0.0005 USDC on base-sepolia; the price is 0.001 USDC. Nothing was paid."
    );
    assert!(report["signed"].is_null(), "the wallet was asked to sign");
    assert!(origin.seen().is_empty());
}

#[test]
fn a_metered_route_pays_its_fixed_price_fallback_from_the_page_and_one_without_says_to_pay_from_code(
) {
    let origin = json_origin();
    let metered = |fallback: &str| {
        format!(
            "{{name: browser-feed, path: /feed/*,{fallback} accepts: [{{network: base-sepolia}}], \
             meter: {{unit: records, price: \"10\", ceiling: \"100000\"}}}}"
        )
    };
    let shop = shop_selling(&origin, 10 * PRICE, &metered(&format!(" amount: {PRICE},")));
    let report = browse(&shop, "/feed/today", "sign", "paywall-metered");
    assert_eq!(
        report["prices"][0],
        "up to 0.1 USDC on base-sepolia, metered: pay from code"
    );
    assert_eq!(report["prices"][1], "0.001 USDC on base-sepolia");
    assert_eq!(report["payable"], serde_json::json!(["x402-accept-1"]));
    assert_eq!(report["paid"], true, "{report}");
    assert_eq!(report["signed"]["message"]["value"], PRICE.to_string());

    let only = shop_selling(&origin, 10 * PRICE, &metered(""));
    let report = browse(&only, "/feed/today", "sign", "paywall-metered-only");
    assert_eq!(report["payable"], serde_json::json!([]));
    assert!(report["unpayable"]
        .as_str()
        .is_some_and(|t| t.contains("metered (upto) or channel payments")));
}
