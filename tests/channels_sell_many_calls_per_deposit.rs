//! Escrow channels (`batch-settlement`): the official TypeScript client funds one channel with
//! one deposit and pays many calls with vouchers; levy claims them all in one transaction.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use serde_json::Value;

use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::settle::settlement_yaml;
use crate::support::{request, upstream_yaml, Levy, Origin, Reply, PAY_TO};

/// levy's receiver authorizer in these tests: anvil key 4, its own account.
const AUTHORIZER_KEY: &str = KEYS[4];

pub(crate) struct ChannelSetup {
    pub chain: TestChain,
    pub levy: Levy,
    pub _origin: Origin,
    pub _dir: tempfile::TempDir,
}

/// A chain, an origin and levy selling `/ticks` at 1000 atomic units through channels (and
/// exact), with a minimum deposit of `min_deposit` and claims only when asked.
pub(crate) fn channel_setup(min_deposit: u64) -> ChannelSetup {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 10_000_000);
    // The authorizer sends deposits and claims: it needs gas.
    chain.rpc(
        "anvil_setBalance",
        serde_json::json!([signer(AUTHORIZER_KEY).address(), "0x56BC75E2D63100000"]),
    );
    let origin = Origin::start(|_| Reply::ok(r#"{"tick":1}"#));
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("channel.key");
    std::fs::write(&key_file, AUTHORIZER_KEY).expect("write key");
    let channels = format!(
        "    channels:\n      authorizer: \"{}\"\n      key_file: {}\n      claim_every_seconds: 3600\n      watch_every_seconds: 1\n",
        signer(AUTHORIZER_KEY).address(),
        key_file.display()
    );
    let route = format!(
        "    - {{name: ticks, path: /ticks, amount: 1000, accepts: [{{network: base-sepolia}}], channel: {{min_deposit: \"{min_deposit}\"}}}}\n"
    );
    let levy = Levy::start(&format!(
        "{}{}{}  routes:\n{route}",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(dir.path(), &channels),
    ));
    ChannelSetup {
        chain,
        levy,
        _origin: origin,
        _dir: dir,
    }
}

/// Runs the official TypeScript batch-settlement client for `count` calls.
pub(crate) fn pay_channel(url: &str, count: usize) -> Value {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let out = Command::new("node")
        .arg("pay-channel.mjs")
        .arg(url)
        .arg(count.to_string())
        .current_dir(&dir)
        .env("PAYER_KEY", KEYS[0])
        .output()
        .expect("run the client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|_| {
        panic!(
            "no JSON\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub(crate) fn claim_now(levy: &Levy) {
    let r = request(
        levy.admin,
        "POST /channels/claim HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

pub(crate) fn wait_balance(chain: &TestChain, who: Address, want: U256) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while chain.balance(who) != want {
        assert!(
            Instant::now() < deadline,
            "balance of {who} is {}, expected {want}",
            chain.balance(who)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_official_client_pays_200_calls_from_one_deposit_and_levy_claims_them_in_one_transaction() {
    let s = channel_setup(200_000);
    let payee: Address = PAY_TO.parse().expect("pay_to");
    let before = s.chain.balance(payee);
    let authorizer = signer(AUTHORIZER_KEY).address();
    let sent_before = s.chain.tx_count(authorizer);

    let url = format!("http://{}/ticks", s.levy.addr);
    let result = pay_channel(&url, 200);
    assert_eq!(result["statuses"]["200"], 200, "{result}");
    assert_eq!(result["deposits"], 1, "{result}");
    let last = &result["last"]["paymentResponse"];
    assert_eq!(last["extra"]["chargedAmount"], "1000", "{result}");
    assert_eq!(
        last["extra"]["channelState"]["chargedCumulativeAmount"], "200000",
        "{result}"
    );
    assert_eq!(s.chain.tx_count(authorizer), sent_before + 1, "one deposit");

    claim_now(&s.levy);
    wait_balance(&s.chain, payee, before + U256::from(200 * 1000));
    assert_eq!(
        s.chain.tx_count(authorizer),
        sent_before + 2,
        "one deposit and one claim transaction"
    );
    // Claiming again finds nothing new to claim and sends nothing.
    claim_now(&s.levy);
    assert_eq!(s.chain.tx_count(authorizer), sent_before + 2);
    assert_eq!(s.chain.balance(payee), before + U256::from(200 * 1000));
}

/// A voucher signed in Rust for the official client's channel (payer key 0, default salt),
/// accepting `accepted` (the challenge's batch-settlement entry, echoed as clients do).
fn voucher_header(accepted: &Value, authorizer: Address, max_claimable: u128) -> String {
    use alloy::signers::SignerSync;
    use levy::channel::{domain_separator, voucher_digest, ChannelConfig};
    let payer = signer(KEYS[0]);
    let config = ChannelConfig {
        payer: payer.address(),
        payer_authorizer: payer.address(),
        receiver: PAY_TO.parse().expect("pay_to"),
        receiver_authorizer: authorizer,
        token: crate::support::chain::BASE_SEPOLIA_USDC,
        withdraw_delay: 900,
        salt: alloy::primitives::B256::ZERO,
    };
    let domain = domain_separator(84532);
    let id = config.id(&domain);
    let signature = payer
        .sign_hash_sync(&voucher_digest(&domain, id, max_claimable))
        .expect("sign");
    let payment = serde_json::json!({
        "x402Version": 2,
        "accepted": accepted,
        "payload": {"type": "voucher", "channelConfig": {
            "payer": config.payer, "payerAuthorizer": config.payer_authorizer,
            "receiver": config.receiver, "receiverAuthorizer": config.receiver_authorizer,
            "token": config.token, "withdrawDelay": 900, "salt": config.salt},
            "voucher": {"channelId": id, "maxClaimableAmount": max_claimable.to_string(),
                        "signature": alloy::primitives::Bytes::from(signature.as_bytes().to_vec())}},
    });
    levy::x402::encode_header(payment.to_string().as_bytes())
}

#[test]
fn a_voucher_for_a_stale_cumulative_amount_gets_one_corrective_challenge_with_the_channel_state() {
    let s = channel_setup(200_000);
    let url = format!("http://{}/ticks", s.levy.addr);
    let result = pay_channel(&url, 1);
    assert_eq!(result["statuses"]["200"], 1, "{result}");
    let authorizer = signer(AUTHORIZER_KEY).address();
    let unpaid = request(s.levy.addr, "GET /ticks HTTP/1.1\r\nHost: a\r\n\r\n");
    let offered: Value = serde_json::from_slice(
        &levy::x402::decode_header(
            unpaid
                .header("payment-required")
                .expect("challenge")
                .as_bytes(),
        )
        .expect("base64"),
    )
    .expect("json");
    let accepted = &offered["accepts"][0];
    assert_eq!(accepted["scheme"], "batch-settlement");

    // The next voucher must be for 2000; one for 1000 again is stale.
    let r = request(
        s.levy.addr,
        &format!(
            "GET /ticks HTTP/1.1\r\nHost: a\r\nPAYMENT-SIGNATURE: {}\r\n\r\n",
            voucher_header(accepted, authorizer, 1000)
        ),
    );
    assert_eq!(r.status, 402);
    let headers = r.headers_named("payment-required");
    assert_eq!(headers.len(), 1, "exactly one challenge header");
    let challenge: Value =
        serde_json::from_slice(&levy::x402::decode_header(headers[0].as_bytes()).expect("base64"))
            .expect("json");
    assert_eq!(
        challenge["error"],
        "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    );
    let extra = &challenge["accepts"][0]["extra"];
    assert_eq!(
        extra["channelState"]["chargedCumulativeAmount"], "1000",
        "{challenge}"
    );
    assert_eq!(
        extra["voucherState"]["signedMaxClaimable"], "1000",
        "{challenge}"
    );

    // The right amount is served.
    let r = request(
        s.levy.addr,
        &format!(
            "GET /ticks HTTP/1.1\r\nHost: a\r\nPAYMENT-SIGNATURE: {}\r\n\r\n",
            voucher_header(accepted, authorizer, 2000)
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}
