//! Escrow channels (`batch-settlement`): the official TypeScript client funds one channel with
//! one deposit and pays many calls with vouchers; levy claims them all in one transaction.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::sol;
use alloy::sol_types::SolCall;
use serde_json::Value;

use crate::support::chain::{signer, TestChain, BATCH_SETTLEMENT, KEYS};
use crate::support::settle::settlement_yaml;
use levy::channel::ChannelConfig;

use crate::support::client::Response;
use crate::support::interop::{run_script, Runtime};
use crate::support::pay::decode;
use crate::support::process::{process_config, spawn_levy, wait_listening};
use crate::support::{request, upstream_yaml, Levy, Origin, Reply, PAY_TO};

/// levy's receiver authorizer in these tests: anvil key 4, its own account.
pub(crate) const AUTHORIZER_KEY: &str = KEYS[4];

pub(crate) struct ChannelSetup {
    pub chain: TestChain,
    pub levy: Levy,
    pub origin: Origin,
    pub _dir: tempfile::TempDir,
}

/// A chain with the payer (key 0) funded and levy's authorizer given gas.
pub(crate) fn channel_chain() -> TestChain {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 10_000_000);
    // The authorizer sends deposits and claims: it needs gas.
    chain.rpc(
        "anvil_setBalance",
        serde_json::json!([signer(AUTHORIZER_KEY).address(), "0x56BC75E2D63100000"]),
    );
    chain
}

/// The `/ticks` route: 1000 atomic units a call through channels (and exact), with a
/// minimum deposit of `min_deposit`.
pub(crate) fn ticks_route(min_deposit: u64) -> String {
    format!(
        "    - {{name: ticks, path: /ticks, amount: 1000, accepts: [{{network: base-sepolia}}], channel: {{min_deposit: \"{min_deposit}\"}}}}\n"
    )
}

/// The `levy:` YAML selling `route` (see [`ticks_route`]), with channel state in `dir` and
/// claims only when asked (or when a payer asks to withdraw).
pub(crate) fn channel_yaml(
    chain: &TestChain,
    origin: &Origin,
    dir: &Path,
    route: &str,
    more_channel_settings: &str,
) -> String {
    channel_yaml_to(chain, origin.addr, dir, route, more_channel_settings)
}

/// [`channel_yaml`] in front of the origin at `upstream`.
pub(crate) fn channel_yaml_to(
    chain: &TestChain,
    upstream: SocketAddr,
    dir: &Path,
    route: &str,
    more_channel_settings: &str,
) -> String {
    let key_file = dir.join("channel.key");
    std::fs::write(&key_file, AUTHORIZER_KEY).expect("write key");
    let channels = format!(
        "    channels:\n      authorizer: \"{}\"\n      key_file: {}\n      claim_every_seconds: 3600\n      watch_every_seconds: 1\n{more_channel_settings}",
        signer(AUTHORIZER_KEY).address(),
        key_file.display()
    );
    format!(
        "{}{}{}  routes:\n{route}",
        upstream_yaml(upstream),
        chain.levy_yaml(),
        settlement_yaml(dir, &channels),
    )
}

/// [`channel_setup_with`] an origin that answers every call at once.
pub(crate) fn channel_setup(min_deposit: u64) -> ChannelSetup {
    channel_setup_with(min_deposit, |_| Reply::ok(r#"{"tick":1}"#))
}

/// A chain, an origin answering with `handler` and levy in front of it (see [`channel_yaml`]).
pub(crate) fn channel_setup_with(
    min_deposit: u64,
    handler: impl Fn(&crate::support::origin::Seen) -> Reply + Send + Sync + 'static,
) -> ChannelSetup {
    channel_setup_configured(&ticks_route(min_deposit), "", handler)
}

/// [`channel_setup_with`] `route` and more `levy.settlement.channels` settings (YAML lines,
/// indented six spaces).
pub(crate) fn channel_setup_configured(
    route: &str,
    more_channel_settings: &str,
    handler: impl Fn(&crate::support::origin::Seen) -> Reply + Send + Sync + 'static,
) -> ChannelSetup {
    let chain = channel_chain();
    let origin = Origin::start(handler);
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&channel_yaml(
        &chain,
        &origin,
        dir.path(),
        route,
        more_channel_settings,
    ));
    ChannelSetup {
        chain,
        levy,
        origin,
        _dir: dir,
    }
}

/// The official batch-settlement clients.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Client {
    /// `@x402/evm`'s `BatchSettlementEvmScheme` through `@x402/fetch`.
    TypeScript,
    /// `x402`'s `BatchSettlementEvmScheme` through the requests adapter.
    Python,
}

/// Runs an official batch-settlement client (payer key 0) for `count` calls on one channel;
/// returns its report: `{statuses, deposits, last: {paymentResponse}, errors}`.
pub(crate) fn pay_channel(client: Client, url: &str, count: usize) -> Value {
    pay_channel_with(client, url, count, &[])
}

/// [`pay_channel`] with the client reading the chain at `rpc_url` (as it must to adopt
/// levy's channel state from a corrective challenge).
pub(crate) fn pay_channel_reading(
    client: Client,
    url: &str,
    count: usize,
    rpc_url: Option<&str>,
) -> Value {
    let envs: Vec<(&str, &str)> = rpc_url.map(|u| ("X402_RPC_URL", u)).into_iter().collect();
    pay_channel_with(client, url, count, &envs)
}

/// [`pay_channel`] with the script's options in `envs` (`X402_RPC_URL`, `X402_REFUND`).
pub(crate) fn pay_channel_with(
    client: Client,
    url: &str,
    count: usize,
    envs: &[(&str, &str)],
) -> Value {
    let (runtime, script) = match client {
        Client::TypeScript => (Runtime::Node, "pay-channel.mjs"),
        Client::Python => (Runtime::Python, "pay_channel.py"),
    };
    let count = count.to_string();
    run_script(runtime, script, &[url, &count], envs)
}

/// Asks levy (its admin listener at `admin`) to claim every channel now; how many channels
/// it claimed (it must have claimed every one it tried).
pub(crate) fn claim_now(admin: SocketAddr) -> u64 {
    let r = request(
        admin,
        "POST /channels/claim HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["failed"], 0, "{report}");
    report["claimed"].as_u64().expect("claimed")
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

/// `client` pays 200 calls from one deposit; one claim transaction raises the payee by
/// exactly 200 × price, and a second claim finds nothing to send.
fn two_hundred_calls_one_deposit_one_claim(client: Client) {
    let s = channel_setup(200_000);
    let payee: Address = PAY_TO.parse().expect("pay_to");
    let before = s.chain.balance(payee);
    let authorizer = signer(AUTHORIZER_KEY).address();
    let sent_before = s.chain.tx_count(authorizer);

    let url = format!("http://{}/ticks", s.levy.addr);
    let result = pay_channel(client, &url, 200);
    assert_eq!(result["statuses"]["200"], 200, "{result}");
    assert_eq!(result["deposits"], 1, "{result}");
    let last = &result["last"]["paymentResponse"];
    assert_eq!(last["extra"]["chargedAmount"], "1000", "{result}");
    assert_eq!(
        last["extra"]["channelState"]["chargedCumulativeAmount"], "200000",
        "{result}"
    );
    assert_eq!(s.chain.tx_count(authorizer), sent_before + 1, "one deposit");
    assert_eq!(s.origin.seen().len(), 200);

    assert_eq!(claim_now(s.levy.admin), 1, "one channel claimed");
    wait_balance(&s.chain, payee, before + U256::from(200 * 1000));
    assert_eq!(
        s.chain.tx_count(authorizer),
        sent_before + 2,
        "one deposit and one claim transaction"
    );
    // Claiming again finds nothing new to claim and sends nothing.
    assert_eq!(claim_now(s.levy.admin), 0);
    assert_eq!(s.chain.tx_count(authorizer), sent_before + 2);
    assert_eq!(s.chain.balance(payee), before + U256::from(200 * 1000));
}

#[test]
fn the_official_typescript_client_pays_200_calls_from_one_deposit_and_levy_claims_them_in_one_transaction(
) {
    two_hundred_calls_one_deposit_one_claim(Client::TypeScript);
}

#[test]
fn the_official_python_client_pays_200_calls_from_one_deposit_and_levy_claims_them_in_one_transaction(
) {
    two_hundred_calls_one_deposit_one_claim(Client::Python);
}

/// The official clients' channel with levy (payer key 0, default salt, the offered delay).
pub(crate) fn payer_channel(authorizer: Address) -> ChannelConfig {
    let payer = signer(KEYS[0]);
    ChannelConfig {
        payer: payer.address(),
        payer_authorizer: payer.address(),
        receiver: PAY_TO.parse().expect("pay_to"),
        receiver_authorizer: authorizer,
        token: crate::support::chain::BASE_SEPOLIA_USDC,
        withdraw_delay: 900,
        salt: alloy::primitives::B256::ZERO,
    }
}

/// A voucher signed in Rust by payer key 0 for the channel `config`, accepting `accepted`
/// (the challenge's batch-settlement entry, echoed as clients do).
pub(crate) fn voucher_header(
    accepted: &Value,
    config: &ChannelConfig,
    max_claimable: u128,
) -> String {
    signed_payload(
        accepted,
        config,
        max_claimable,
        serde_json::json!({"type": "voucher"}),
    )
}

/// A payload of `kind` (`{"type": …}` and any fields of its own) carrying a voucher for
/// `max_claimable` signed by payer key 0 on the channel `config`.
pub(crate) fn signed_payload(
    accepted: &Value,
    config: &ChannelConfig,
    max_claimable: u128,
    mut kind: Value,
) -> String {
    use alloy::signers::SignerSync;
    use levy::channel::{domain_separator, voucher_digest};
    let domain = domain_separator(84532);
    let id = config.id(&domain);
    let signature = signer(KEYS[0])
        .sign_hash_sync(&voucher_digest(&domain, id, max_claimable))
        .expect("sign");
    kind["channelConfig"] = serde_json::json!(config);
    kind["voucher"] = serde_json::json!({"channelId": id,
        "maxClaimableAmount": max_claimable.to_string(),
        "signature": alloy::primitives::Bytes::from(signature.as_bytes().to_vec())});
    let payment = serde_json::json!({"x402Version": 2, "accepted": accepted, "payload": kind});
    levy::x402::encode_header(payment.to_string().as_bytes())
}

/// The batch-settlement entry of the route's challenge.
pub(crate) fn offered(levy: &Levy) -> Value {
    offered_at(levy.addr)
}

/// [`offered`] by levy at `addr`.
pub(crate) fn offered_at(addr: SocketAddr) -> Value {
    let unpaid = request(addr, "GET /ticks HTTP/1.1\r\nHost: a\r\n\r\n");
    let offered = decode(unpaid.header("payment-required").expect("challenge"));
    let accepted = offered["accepts"][0].clone();
    assert_eq!(accepted["scheme"], "batch-settlement");
    accepted
}

/// GETs `/ticks` from levy at `addr`, paying with `header`.
pub(crate) fn get_paying(addr: SocketAddr, header: &str) -> Response {
    request(
        addr,
        &format!("GET /ticks HTTP/1.1\r\nHost: a\r\nPAYMENT-SIGNATURE: {header}\r\n\r\n"),
    )
}

/// The error code of a refusal, which must be one challenge header.
pub(crate) fn refusal(r: &Response) -> Value {
    assert_eq!(r.status, 402, "{}", r.text());
    let headers = r.headers_named("payment-required");
    assert_eq!(headers.len(), 1, "exactly one challenge header");
    decode(headers[0])
}

#[test]
fn a_voucher_for_a_stale_cumulative_amount_gets_one_corrective_challenge_with_the_channel_state() {
    let s = channel_setup(200_000);
    let url = format!("http://{}/ticks", s.levy.addr);
    let result = pay_channel(Client::TypeScript, &url, 1);
    assert_eq!(result["statuses"]["200"], 1, "{result}");
    let channel = payer_channel(signer(AUTHORIZER_KEY).address());
    let accepted = &offered(&s.levy);

    // The next voucher must be for 2000; one for 1000 again is stale.
    let challenge = refusal(&get_paying(
        s.levy.addr,
        &voucher_header(accepted, &channel, 1000),
    ));
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
    let r = get_paying(s.levy.addr, &voucher_header(accepted, &channel, 2000));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_voucher_that_claims_more_than_the_price_or_the_deposit_is_refused_and_nothing_is_served() {
    // The client deposits the announced minimum, two calls' worth, and spends it all.
    let s = channel_setup(2000);
    let url = format!("http://{}/ticks", s.levy.addr);
    let result = pay_channel(Client::TypeScript, &url, 2);
    assert_eq!(result["statuses"]["200"], 2, "{result}");
    assert_eq!(result["deposits"], 1, "{result}");
    let channel = payer_channel(signer(AUTHORIZER_KEY).address());
    let accepted = &offered(&s.levy);

    // The next call's voucher is for 3000, more than the 2000 deposited.
    let challenge = refusal(&get_paying(
        s.levy.addr,
        &voucher_header(accepted, &channel, 3000),
    ));
    assert_eq!(
        challenge["error"],
        "invalid_batch_settlement_evm_cumulative_exceeds_balance"
    );
    // A voucher for more than one price's worth over what was charged claims too much.
    let challenge = refusal(&get_paying(
        s.levy.addr,
        &voucher_header(accepted, &channel, 9000),
    ));
    assert_eq!(
        challenge["error"],
        "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    );
    assert_eq!(
        s.origin.seen().len(),
        2,
        "a refused voucher reached the origin"
    );

    // Only what was served is claimed.
    let payee: Address = PAY_TO.parse().expect("pay_to");
    let before = s.chain.balance(payee);
    claim_now(s.levy.admin);
    wait_balance(&s.chain, payee, before + U256::from(2000));
}

#[test]
fn a_voucher_for_a_channel_to_another_receiver_or_authorizer_is_refused() {
    let s = channel_setup(200_000);
    let url = format!("http://{}/ticks", s.levy.addr);
    assert_eq!(
        pay_channel(Client::TypeScript, &url, 1)["statuses"]["200"],
        1
    );
    let accepted = &offered(&s.levy);
    let levys = payer_channel(signer(AUTHORIZER_KEY).address());

    let to_another = ChannelConfig {
        receiver: signer(KEYS[3]).address(),
        ..levys
    };
    let challenge = refusal(&get_paying(
        s.levy.addr,
        &voucher_header(accepted, &to_another, 2000),
    ));
    assert_eq!(
        challenge["error"],
        "invalid_batch_settlement_evm_receiver_mismatch"
    );
    let other_authorizer = ChannelConfig {
        receiver_authorizer: signer(KEYS[3]).address(),
        ..levys
    };
    let challenge = refusal(&get_paying(
        s.levy.addr,
        &voucher_header(accepted, &other_authorizer, 2000),
    ));
    assert_eq!(
        challenge["error"],
        "invalid_batch_settlement_evm_receiver_authorizer_mismatch"
    );
    assert_eq!(
        s.origin.seen().len(),
        1,
        "a refused voucher reached the origin"
    );
    // The channel itself is untouched: its next voucher is still 2000.
    assert_eq!(
        get_paying(s.levy.addr, &voucher_header(accepted, &levys, 2000)).status,
        200
    );
}

#[test]
fn a_second_request_on_a_channel_while_one_is_in_flight_is_refused_as_busy() {
    let s = channel_setup_with(200_000, |_| {
        std::thread::sleep(Duration::from_millis(700));
        Reply::ok(r#"{"tick":1}"#)
    });
    let url = format!("http://{}/ticks", s.levy.addr);
    let result = pay_channel(Client::TypeScript, &url, 1);
    assert_eq!(result["statuses"]["200"], 1, "{result}");
    let accepted = offered(&s.levy);
    let channel = payer_channel(signer(AUTHORIZER_KEY).address());

    let first = {
        let (addr, header) = (s.levy.addr, voucher_header(&accepted, &channel, 2000));
        std::thread::spawn(move || get_paying(addr, &header))
    };
    std::thread::sleep(Duration::from_millis(150));
    // Both the voucher after the one in flight and a copy of it are turned away.
    for max in [3000, 2000] {
        let challenge = refusal(&get_paying(
            s.levy.addr,
            &voucher_header(&accepted, &channel, max),
        ));
        assert_eq!(
            challenge["error"],
            "invalid_batch_settlement_evm_channel_busy"
        );
    }
    assert_eq!(first.join().expect("first request").status, 200);
    // Once it is done, the channel takes the next voucher.
    assert_eq!(
        get_paying(s.levy.addr, &voucher_header(&accepted, &channel, 3000)).status,
        200
    );
    assert_eq!(s.origin.seen().len(), 3);
}

#[test]
fn a_voucher_whose_hold_ran_out_during_a_slow_call_is_charged_once_though_two_calls_used_it() {
    // The hold lasts the route's max_timeout_seconds (8); the slow call takes 9 s.
    let route = ticks_route(200_000).replace("channel:", "max_timeout_seconds: 8, channel:");
    let chain = channel_chain();
    let origin = Origin::start(|seen| {
        if seen.target.contains("slow") {
            std::thread::sleep(Duration::from_secs(9));
        }
        Reply::ok(r#"{"tick":1}"#)
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = channel_yaml(&chain, &origin, dir.path(), &route, "")
        .replace("read_timeout_ms: 1000", "read_timeout_ms: 20000")
        .replace(
            "  routes:\n",
            "  payments:\n    valid_before_margin_seconds: 2\n  routes:\n",
        );
    let s = ChannelSetup {
        levy: Levy::start(&yaml),
        chain,
        origin,
        _dir: dir,
    };
    let url = format!("http://{}/ticks", s.levy.addr);
    let result = pay_channel(Client::TypeScript, &url, 1);
    assert_eq!(result["statuses"]["200"], 1, "{result}");
    let accepted = offered(&s.levy);
    let channel = payer_channel(signer(AUTHORIZER_KEY).address());
    let voucher = voucher_header(&accepted, &channel, 2000);

    let slow = {
        let (addr, header) = (s.levy.addr, voucher.clone());
        std::thread::spawn(move || {
            request(
                addr,
                &format!(
                    "GET /ticks?slow HTTP/1.1\r\nHost: a\r\nPAYMENT-SIGNATURE: {header}\r\n\r\n"
                ),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(8500));
    let quick = get_paying(s.levy.addr, &voucher);
    assert_eq!(quick.status, 200, "{}", quick.text());
    let slow = slow.join().expect("the slow call");
    assert_eq!(
        slow.status,
        503,
        "the second use of one voucher: {}",
        slow.text()
    );
    // The channel moved on by one price: the next voucher is for 3000.
    let r = get_paying(s.levy.addr, &voucher_header(&accepted, &channel, 3000));
    assert_eq!(r.status, 200, "{}", r.text());
}

sol! {
    struct PayerChannel {
        address payer;
        address payerAuthorizer;
        address receiver;
        address receiverAuthorizer;
        address token;
        uint40 withdrawDelay;
        bytes32 salt;
    }

    /// The payer's side of the escrow.
    interface IPayerSide {
        function initiateWithdraw(PayerChannel config, uint128 amount) external;
        function finalizeWithdraw(PayerChannel config) external;
    }
}

/// The official clients' channel as the escrow's payer-side calls take it.
fn payer_side_channel() -> PayerChannel {
    let c = payer_channel(signer(AUTHORIZER_KEY).address());
    PayerChannel {
        payer: c.payer,
        payerAuthorizer: c.payer_authorizer,
        receiver: c.receiver,
        receiverAuthorizer: c.receiver_authorizer,
        token: c.token,
        withdrawDelay: alloy::primitives::Uint::<40, 1>::from(c.withdraw_delay),
        salt: c.salt,
    }
}

/// The payer (key 0) asks the escrow to withdraw `amount` from the official clients' channel.
pub(crate) fn initiate_withdraw(chain: &TestChain, amount: u128) {
    chain.send_as(
        KEYS[0],
        BATCH_SETTLEMENT,
        IPayerSide::initiateWithdrawCall {
            config: payer_side_channel(),
            amount,
        }
        .abi_encode(),
    );
}

/// The chain's clock moved past the withdraw delay, the payer finalizes its withdrawal.
pub(crate) fn finalize_withdraw(chain: &TestChain) {
    chain.rpc("evm_increaseTime", serde_json::json!([901]));
    chain.rpc("evm_mine", serde_json::json!([]));
    chain.send_as(
        KEYS[0],
        BATCH_SETTLEMENT,
        IPayerSide::finalizeWithdrawCall {
            config: payer_side_channel(),
        }
        .abi_encode(),
    );
}

#[test]
fn when_the_payer_asks_to_withdraw_levy_claims_what_it_served_and_takes_no_voucher_on_the_withdrawn_deposit(
) {
    let s = channel_setup(200_000);
    let url = format!("http://{}/ticks", s.levy.addr);
    let result = pay_channel(Client::TypeScript, &url, 5);
    assert_eq!(result["statuses"]["200"], 5, "{result}");
    let payee: Address = PAY_TO.parse().expect("pay_to");
    let payer = signer(KEYS[0]).address();
    let (payee_before, payer_before) = (s.chain.balance(payee), s.chain.balance(payer));
    let c = payer_channel(signer(AUTHORIZER_KEY).address());
    initiate_withdraw(&s.chain, 200_000);
    // The claimer's own schedule is an hour away: only the watch can claim this.
    wait_balance(&s.chain, payee, payee_before + U256::from(5 * 1000));
    // A channel whose payer is withdrawing takes no more calls.
    let accepted = offered(&s.levy);
    let served = s.origin.seen().len();
    let next = voucher_header(&accepted, &c, 6 * 1000);
    let r = get_paying(s.levy.addr, &next);
    assert_eq!(
        refusal(&r)["error"],
        "invalid_batch_settlement_evm_withdraw_pending"
    );

    // When the delay is over, the payer gets back only what levy did not serve.
    finalize_withdraw(&s.chain);
    assert_eq!(
        s.chain.balance(payer),
        payer_before + U256::from(200_000 - 5 * 1000)
    );
    // The deposit withdrawn, its old balance buys nothing: levy reads the escrow again.
    let r = get_paying(s.levy.addr, &next);
    assert_eq!(
        refusal(&r)["error"],
        "invalid_batch_settlement_evm_cumulative_exceeds_balance"
    );
    assert_eq!(
        s.origin.seen().len(),
        served,
        "a call was served after the withdrawal"
    );
}

/// The escrow's balance and total claimed for the official clients' channel.
pub(crate) fn escrowed(chain: &TestChain) -> (u128, u128) {
    use levy::channel::{domain_separator, IBatchSettlement};
    let id = payer_channel(signer(AUTHORIZER_KEY).address()).id(&domain_separator(84532));
    let out = chain.call(
        BATCH_SETTLEMENT,
        IBatchSettlement::channelsCall { channelId: id }.abi_encode(),
    );
    let r = IBatchSettlement::channelsCall::abi_decode_returns(&out).expect("channels");
    (r.balance, r.totalClaimed)
}

#[test]
fn a_sigkill_between_calls_loses_no_voucher() {
    let chain = channel_chain();
    let origin = Origin::start(|_| Reply::ok(r#"{"tick":1}"#));
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, addr, admin) = process_config(
        dir.path(),
        &channel_yaml(&chain, &origin, dir.path(), &ticks_route(400_000), ""),
    );
    let payee: Address = PAY_TO.parse().expect("pay_to");
    let before = chain.balance(payee);
    let url = format!("http://{addr}/ticks");

    let mut levy = spawn_levy(&config);
    wait_listening(addr);
    let result = pay_channel(Client::TypeScript, &url, 100);
    assert_eq!(result["statuses"]["200"], 100, "{result}");
    levy.sigkill();

    let _levy = spawn_levy(&config);
    wait_listening(addr);
    // A fresh client that cannot read the chain offers a new deposit with a first voucher;
    // levy answers where the channel stands before any money moves.
    let result = pay_channel(Client::TypeScript, &url, 1);
    assert_eq!(result["deposits"], 1, "{result}");
    assert_eq!(
        result["errors"][0], "invalid_batch_settlement_evm_cumulative_amount_mismatch",
        "{result}"
    );
    assert_eq!(escrowed(&chain), (400_000, 0), "the deposit was sent");
    // A fresh client knows nothing of the channel; levy's corrective challenge tells it
    // where the channel stands, which only the journal knows (nothing was claimed yet).
    let result = pay_channel_reading(Client::TypeScript, &url, 100, Some(&chain.rpc_url));
    assert_eq!(result["statuses"]["200"], 100, "{result}");
    assert_eq!(result["deposits"], 0, "{result}");
    assert_eq!(
        result["last"]["paymentResponse"]["extra"]["channelState"]["chargedCumulativeAmount"],
        "200000",
        "{result}"
    );
    claim_now(admin);
    wait_balance(&chain, payee, before + U256::from(200 * 1000));
    assert_eq!(escrowed(&chain), (400_000, 200_000));
    assert_eq!(origin.seen().len(), 200);
}

/// The gas of every transaction `who` sent in blocks after `after` (anvil mines each
/// transaction in its own block).
fn gas_sent_by(chain: &TestChain, who: Address, after: u64) -> u64 {
    let latest = block_number(chain);
    let mut gas = 0;
    for n in after + 1..=latest {
        let block = chain.rpc(
            "eth_getBlockByNumber",
            serde_json::json!([format!("{n:#x}"), true]),
        );
        for tx in block["transactions"].as_array().expect("transactions") {
            if tx["from"].as_str().and_then(|f| f.parse::<Address>().ok()) == Some(who) {
                let hash = tx["hash"].as_str().expect("hash").parse().expect("hash");
                gas += chain.gas_used(hash);
            }
        }
    }
    gas
}

/// The chain's latest block.
fn block_number(chain: &TestChain) -> u64 {
    let v = chain.rpc("eth_blockNumber", serde_json::json!([]));
    u64::from_str_radix(v.as_str().expect("hex").trim_start_matches("0x"), 16).expect("hex")
}

/// Prints the figures BENCHMARKS.md reports: gas per request for 200 requests paid through
/// one channel (its deposit and its claim) and 200 paid with `exact` (one batch of 200).
#[test]
fn two_hundred_channel_requests_cost_a_fraction_of_the_gas_of_two_hundred_exact_ones() {
    let s = channel_setup(200_000);
    let payee: Address = PAY_TO.parse().expect("pay_to");
    // Warm the payee's balance slot, as the exact gas figures do.
    s.chain.mint(payee, 1);
    let authorizer = signer(AUTHORIZER_KEY).address();
    let start = block_number(&s.chain);
    let result = pay_channel(
        Client::TypeScript,
        &format!("http://{}/ticks", s.levy.addr),
        200,
    );
    assert_eq!(result["statuses"]["200"], 200, "{result}");
    let before = s.chain.balance(payee);
    claim_now(s.levy.admin);
    wait_balance(&s.chain, payee, before + U256::from(200 * 1000));
    let channel_gas = gas_sent_by(&s.chain, authorizer, start);

    let dir = tempfile::tempdir().expect("tempdir");
    let exact = crate::support::settle::settling_levy(
        &s.chain,
        &s.origin,
        dir.path(),
        "    max_batch: 200\n    max_delay_ms: 60000\n",
        "",
    );
    let terms = crate::support::pay::challenge(&exact, "/data/x");
    let start = block_number(&s.chain);
    for _ in 0..200 {
        let header = crate::support::pay::sign_for(&terms, KEYS[0]).1;
        let paid = crate::support::pay::paid_get("/data/x", "PAYMENT-SIGNATURE", &header);
        assert_eq!(request(exact.addr, &paid).status, 200);
    }
    crate::support::settle::wait_all_final(exact.admin, Duration::from_secs(120));
    let settler = signer(crate::support::chain::SETTLER_KEY).address();
    let exact_gas = gas_sent_by(&s.chain, settler, start);
    eprintln!(
        "200 requests: channel {channel_gas} gas ({} per request: one deposit, one claim), exact {exact_gas} gas ({} per request), exact / channel = {:.1}",
        channel_gas / 200,
        exact_gas / 200,
        exact_gas as f64 / channel_gas as f64
    );
    assert!(channel_gas * 10 < exact_gas, "{channel_gas} vs {exact_gas}");
}

/// Vouchers on a channel nobody deposited in cost levy one escrow read while it stays empty
/// (two seconds at a time) and keep no slot for it: a flood of them is refused as
/// `channel_not_found` without reading the chain for each.
#[test]
fn vouchers_for_a_channel_nobody_deposited_in_are_refused_after_one_read() {
    let chain = channel_chain();
    let rpc = crate::support::lagging_rpc::LaggingRpc::start(&chain.rpc_url, Duration::ZERO);
    let origin = Origin::start(|_| Reply::ok(r#"{"tick":1}"#));
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(
        &channel_yaml(&chain, &origin, dir.path(), &ticks_route(1000), "")
            .replace(&chain.rpc_url, &rpc.url),
    );
    let accepted = offered(&levy);
    let empty = ChannelConfig {
        salt: alloy::primitives::B256::repeat_byte(9),
        ..payer_channel(signer(AUTHORIZER_KEY).address())
    };
    let before = rpc.calls("eth_call");
    let started = Instant::now();
    for _ in 0..20 {
        let challenge = refusal(&get_paying(
            levy.addr,
            &voucher_header(&accepted, &empty, 1000),
        ));
        assert_eq!(
            challenge["error"],
            "invalid_batch_settlement_evm_channel_not_found"
        );
    }
    // One read of the escrow (its channel, pending withdrawal and refund nonce) per two
    // seconds the flood lasted, begun.
    let windows = started.elapsed().as_secs() / 2 + 1;
    let reads = rpc.calls("eth_call") - before;
    assert!(
        reads <= 3 * windows as usize,
        "{reads} eth_calls in {windows} windows"
    );
    assert!(origin.seen().is_empty());
}
