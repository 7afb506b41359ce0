//! Channels and prepaid bundles served by several levy replicas sharing a real redis-server:
//! a payer's vouchers or calls may reach any replica, and every replica sees the same
//! channel and the same bundle.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use alloy::primitives::{Address, U256};
use serde_json::json;

use crate::channels_sell_many_calls_per_deposit::{
    channel_chain, channel_yaml, claim_now, escrowed, finalize_withdraw, get_paying,
    initiate_withdraw, offered_at, pay_channel, pay_channel_with, payer_channel, refusal,
    signed_payload, ticks_route, voucher_header, wait_balance, Client, AUTHORIZER_KEY,
};
use crate::sessions_sell_prepaid_bundles::{
    call, get_feed_at, paid_pattern, proof_header_at, Client as Bundles, PRICE as BUNDLE_PRICE,
};
use crate::support::chain::{signer, TestChain, KEYS, SETTLER_KEY};
use crate::support::pay::decode;
use crate::support::process::{process_config, spawn_levy, wait_listening, LevyProcess};
use crate::support::redis::RedisServer;
use crate::support::settle::settlement_yaml_signed_by;
use crate::support::{upstream_yaml, Origin, Reply, PAY_TO};

/// A replica's (data, admin) addresses.
type Addrs = (SocketAddr, SocketAddr);

/// Started levy processes, their addresses and their directories.
type Replicas = (Vec<LevyProcess>, Vec<Addrs>, Vec<tempfile::TempDir>);

/// `count` levy processes, the `i`th configured by `yaml(i, its directory)`.
fn start_replicas(count: usize, yaml: impl Fn(usize, &std::path::Path) -> String) -> Replicas {
    let (mut processes, mut addrs, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..count {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, addr, admin) = process_config(dir.path(), &yaml(i, dir.path()));
        processes.push(spawn_levy(&config));
        addrs.push((addr, admin));
        dirs.push(dir);
    }
    for (addr, admin) in &addrs {
        wait_listening(*addr);
        wait_listening(*admin);
    }
    (processes, addrs, dirs)
}

/// `count` levy processes selling `/ticks` through channels, sharing `redis`.
fn channel_replicas(
    count: usize,
    chain: &TestChain,
    origin: &Origin,
    redis: &RedisServer,
) -> Replicas {
    start_replicas(count, |_, dir| {
        channel_yaml(chain, origin, dir, &ticks_route(200_000), "") + &redis.state_yaml()
    })
}

/// The channel's cumulative charge a paid response reports.
fn charged_cumulative(r: &crate::support::client::Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    let receipt = decode(r.header("payment-response").expect("a receipt"));
    receipt["extra"]["channelState"]["chargedCumulativeAmount"]
        .as_str()
        .expect("a cumulative amount")
        .to_owned()
}

#[test]
fn a_channels_vouchers_sent_to_different_replicas_stay_consistent_and_are_claimed_once() {
    let redis = RedisServer::start();
    let chain = channel_chain();
    let origin = Origin::start(|_| {
        std::thread::sleep(Duration::from_millis(100));
        Reply::ok(r#"{"tick":1}"#)
    });
    let (_processes, replicas, _dirs) = channel_replicas(3, &chain, &origin, &redis);
    let payee: Address = PAY_TO.parse().expect("pay_to");
    let before = chain.balance(payee);
    let authorizer = signer(AUTHORIZER_KEY).address();
    let sent_before = chain.tx_count(authorizer);

    // The official client opens the channel on one replica: one deposit, five calls.
    let url = format!("http://{}/ticks", replicas[0].0);
    let opened = pay_channel(Client::TypeScript, &url, 5);
    assert_eq!(opened["statuses"]["200"], 5, "{opened}");
    assert_eq!(opened["deposits"], 1, "{opened}");

    // Its next vouchers go round the replicas; each one sees what the others charged.
    let accepted = offered_at(replicas[1].0);
    let channel = payer_channel(authorizer);
    let mut cumulative = 5_000u128;
    for i in 0..30 {
        cumulative += 1000;
        let r = get_paying(
            replicas[(i + 1) % 3].0,
            &voucher_header(&accepted, &channel, cumulative),
        );
        assert_eq!(charged_cumulative(&r), cumulative.to_string());
    }

    // A voucher one replica took is stale on every other: a corrective challenge with the
    // channel as the replicas share it.
    for (addr, _) in &replicas {
        let challenge = refusal(&get_paying(
            *addr,
            &voucher_header(&accepted, &channel, cumulative),
        ));
        assert_eq!(
            challenge["error"],
            "invalid_batch_settlement_evm_cumulative_amount_mismatch"
        );
        assert_eq!(
            challenge["accepts"][0]["extra"]["channelState"]["chargedCumulativeAmount"],
            cumulative.to_string(),
            "{challenge}"
        );
    }

    // The next voucher sent to all three at once is served by exactly one.
    for _ in 0..5 {
        cumulative += 1000;
        let header = voucher_header(&accepted, &channel, cumulative);
        let start = Arc::new(Barrier::new(replicas.len()));
        let sent: Vec<_> = replicas
            .iter()
            .map(|(addr, _)| {
                let (addr, header, start) = (*addr, header.clone(), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    get_paying(addr, &header)
                })
            })
            .collect();
        let statuses: Vec<u16> = sent
            .into_iter()
            .map(|t| t.join().expect("request").status)
            .collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 402),
            "{statuses:?}"
        );
    }
    assert_eq!(
        origin.seen().len(),
        40,
        "five, thirty and five calls served"
    );

    // Any replica claims all forty calls in one transaction; another finds nothing left.
    claim_now(replicas[2].1);
    wait_balance(&chain, payee, before + U256::from(40 * 1000));
    assert_eq!(
        chain.tx_count(authorizer),
        sent_before + 2,
        "one deposit and one claim"
    );
    assert_eq!(claim_now(replicas[0].1), 0, "nothing left to claim");
    assert_eq!(chain.tx_count(authorizer), sent_before + 2);
    assert_eq!(chain.balance(payee), before + U256::from(40 * 1000));
}

#[test]
fn vouchers_on_a_withdrawn_deposit_get_402_on_every_replica() {
    let redis = RedisServer::start();
    let chain = channel_chain();
    let origin = Origin::start(|_| Reply::ok(r#"{"tick":1}"#));
    let (_processes, replicas, _dirs) = channel_replicas(2, &chain, &origin, &redis);
    let url = format!("http://{}/ticks", replicas[0].0);
    let opened = pay_channel(Client::TypeScript, &url, 5);
    assert_eq!(opened["statuses"]["200"], 5, "{opened}");
    let payee: Address = PAY_TO.parse().expect("pay_to");
    let payee_before = chain.balance(payee);

    initiate_withdraw(&chain, 200_000);
    // One replica's watch claims the five calls at once.
    wait_balance(&chain, payee, payee_before + U256::from(5 * 1000));
    finalize_withdraw(&chain);
    assert_eq!(
        escrowed(&chain),
        (5000, 5000),
        "the withdrawal left only what was claimed"
    );

    let accepted = offered_at(replicas[1].0);
    let channel = payer_channel(signer(AUTHORIZER_KEY).address());
    let served = origin.seen().len();
    for (addr, _) in &replicas {
        let r = get_paying(*addr, &voucher_header(&accepted, &channel, 6000));
        assert_eq!(
            refusal(&r)["error"],
            "invalid_batch_settlement_evm_cumulative_exceeds_balance",
            "replica {addr}"
        );
    }
    assert_eq!(
        origin.seen().len(),
        served,
        "a call was served on the withdrawn deposit"
    );
}

#[test]
fn a_refund_asked_of_one_replica_returns_exactly_what_no_replica_charged() {
    let redis = RedisServer::start();
    let chain = channel_chain();
    let origin = Origin::start(|_| Reply::ok(r#"{"tick":1}"#));
    let (_processes, replicas, _dirs) = channel_replicas(3, &chain, &origin, &redis);
    let payee: Address = PAY_TO.parse().expect("pay_to");
    let payee_before = chain.balance(payee);
    let url = format!("http://{}/ticks", replicas[0].0);
    let opened = pay_channel(Client::TypeScript, &url, 3);
    assert_eq!(opened["statuses"]["200"], 3, "{opened}");
    let accepted = offered_at(replicas[1].0);
    let channel = payer_channel(signer(AUTHORIZER_KEY).address());
    for cumulative in [4000, 5000] {
        let r = get_paying(
            replicas[1].0,
            &voucher_header(&accepted, &channel, cumulative),
        );
        assert_eq!(charged_cumulative(&r), cumulative.to_string());
    }
    let deposited = escrowed(&chain).0;

    let refund = |addr: SocketAddr, max: u128| {
        get_paying(
            addr,
            &signed_payload(&accepted, &channel, max, json!({"type": "refund"})),
        )
    };
    let r = refund(replicas[2].0, 5000);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(escrowed(&chain), (5000, 5000), "of {deposited}, 5000 kept");
    assert_eq!(chain.balance(payee), payee_before + U256::from(5000));
    // Every replica knows the channel has nothing left to give back or to spend.
    assert_eq!(
        refusal(&refund(replicas[0].0, 5000))["error"],
        "invalid_batch_settlement_evm_refund_no_balance"
    );
    assert_eq!(
        refusal(&get_paying(
            replicas[1].0,
            &voucher_header(&accepted, &channel, 6000)
        ))["error"],
        "invalid_batch_settlement_evm_cumulative_exceeds_balance"
    );
}

#[test]
fn a_refund_asked_of_one_replica_keeps_the_ceiling_of_a_metered_call_streaming_on_another() {
    let redis = RedisServer::start();
    let chain = channel_chain();
    // 2 KiB a call; `?slow` streams it in four parts over 2.4 s.
    let origin = Origin::start(|seen| {
        if seen.target.contains("slow") {
            Reply::Paced {
                head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
                chunks: vec![vec![b'x'; 512]; 4],
                every: Duration::from_millis(600),
            }
        } else {
            Reply::ok("x".repeat(2048))
        }
    });
    // 1000 per started KiB, at most 10 000 a call.
    let route = "    - {name: feed, path: /ticks, meter: {unit: bytes, price: \"1000\", per: 1024, ceiling: \"10000\"}, accepts: [{network: base-sepolia}], channel: {min_deposit: \"100000\"}}\n";
    let (_processes, replicas, _dirs) = start_replicas(2, |_, dir| {
        channel_yaml(&chain, &origin, dir, route, "") + &redis.state_yaml()
    });
    let url = format!("http://{}/ticks", replicas[0].0);
    let opened = pay_channel(Client::TypeScript, &url, 1);
    assert_eq!(opened["statuses"]["200"], 1, "{opened}");
    assert_eq!(escrowed(&chain).0, 100_000);

    // A second call streams on replica 0 under the voucher for 20 000 (its ceiling reserved).
    let accepted = offered_at(replicas[0].0);
    let channel = payer_channel(signer(AUTHORIZER_KEY).address());
    let streaming = {
        let (addr, header) = (replicas[0].0, voucher_header(&accepted, &channel, 20_000));
        std::thread::spawn(move || {
            crate::support::request(
                addr,
                &format!(
                    "GET /ticks?slow HTTP/1.1\r\nHost: a\r\nPAYMENT-SIGNATURE: {header}\r\n\r\n"
                ),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    // Meanwhile replica 1 is asked for everything not charged: the first call earned 2000;
    // the second's 10 000 ceiling is not the payer's to take back while it streams.
    let r = get_paying(
        replicas[1].0,
        &signed_payload(&accepted, &channel, 20_000, json!({"type": "refund"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        escrowed(&chain).0,
        2000 + 10_000,
        "the refund returned a ceiling still streaming"
    );
    let streamed = streaming.join().expect("the streaming call");
    assert_eq!(streamed.status, 200, "{}", streamed.text());
}

/// `count` levy processes selling a ten-call bundle of `/feed`, each settling with its own
/// key, sharing `redis`.
fn bundle_replicas(
    count: usize,
    chain: &TestChain,
    origin: &Origin,
    redis: &RedisServer,
) -> Replicas {
    bundle_replicas_settling(count, chain, origin, redis, "")
}

/// [`bundle_replicas`] with more `levy.settlement` settings (YAML lines, indented four).
fn bundle_replicas_settling(
    count: usize,
    chain: &TestChain,
    origin: &Origin,
    redis: &RedisServer,
    settlement: &str,
) -> Replicas {
    let settlers = [SETTLER_KEY, KEYS[3], KEYS[5]];
    start_replicas(count.min(settlers.len()), |i, dir| {
        format!(
            "{}{}{}{}  routes:\n    - {{name: feed, path: /feed, accepts: [{{network: base-sepolia}}], bundle: {{price: \"{BUNDLE_PRICE}\", calls: 10}}}}\n",
            upstream_yaml(origin.addr),
            chain.levy_yaml(),
            settlement_yaml_signed_by(dir, settlers[i], settlement),
            redis.state_yaml(),
        )
    })
}

#[test]
fn a_bundle_whose_purchase_fails_to_settle_is_taken_back_on_every_replica() {
    let redis = RedisServer::start();
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 10_000_000);
    let origin = Origin::start(|_| Reply::ok(r#"{"feed":1}"#));
    // Batches wait 4 s: time for the payer to cancel its payment first. The payer's denial
    // lasts a second: after it, only the taken-back purchase refuses its draws.
    let (_processes, replicas, _dirs) = bundle_replicas_settling(
        2,
        &chain,
        &origin,
        &redis,
        "    max_delay_ms: 4000\n    funds:\n      deny_seconds: 1\n",
    );
    let host = replicas[0].0.to_string();
    let payer = signer(KEYS[0]).address();

    let unpaid = get_feed_at(replicas[0].0, &host, "X-Nothing", "1");
    let challenge = decode(unpaid.header("payment-required").expect("challenge"));
    let (signed, payment) = crate::support::pay::sign_for(&challenge, KEYS[0]);
    let bought = get_feed_at(replicas[0].0, &host, "PAYMENT-SIGNATURE", &payment);
    assert_eq!(bought.status, 200, "{}", bought.text());
    let proof = proof_header_at(replicas[1].0, &host, payer, KEYS[0]);
    let drawn = get_feed_at(replicas[1].0, &host, "SIGN-IN-WITH-X", &proof);
    assert_eq!(
        drawn.status,
        200,
        "a draw before the cancel: {}",
        drawn.text()
    );

    chain.cancel(KEYS[0], signed.nonce);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while crate::support::settle::settlements_in(replicas[0].1, "failed") < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the canceled payment never failed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let served = origin.seen().len();
    std::thread::sleep(Duration::from_millis(1500));
    for (addr, _) in &replicas {
        let proof = proof_header_at(*addr, &host, payer, KEYS[0]);
        let r = get_feed_at(*addr, &host, "SIGN-IN-WITH-X", &proof);
        assert_eq!(
            refusal(&r)["error"],
            "bundle_used_up",
            "a draw after the purchase failed, on {addr}"
        );
    }
    assert_eq!(
        origin.seen().len(),
        served,
        "a call was served on the failed purchase"
    );
}

#[test]
fn a_bundle_bought_on_one_replica_admits_exactly_its_calls_over_all_of_them() {
    let redis = RedisServer::start();
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 10_000_000);
    let origin = Origin::start(|_| {
        std::thread::sleep(Duration::from_millis(200));
        Reply::ok(r#"{"feed":1}"#)
    });
    let (_processes, replicas, _dirs) = bundle_replicas(3, &chain, &origin, &redis);
    // Behind a load balancer every replica is asked for the same host.
    let host = replicas[0].0.to_string();

    // The official client buys the bundle from one replica (and draws one call).
    let report = call(Bundles::TypeScript, &format!("http://{host}/feed"), 2);
    assert_eq!(paid_pattern(&report), vec![true, false], "{report}");

    // Twelve proofs, each answering a challenge of another replica, sent at once over all
    // three: the nine calls left are served, not one more.
    let payer = signer(KEYS[0]).address();
    let proofs: Vec<String> = (0..12)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(3)); // a challenge of its own
            proof_header_at(replicas[i % 3].0, &host, payer, KEYS[0])
        })
        .collect();
    let start = Arc::new(Barrier::new(proofs.len()));
    let sent: Vec<_> = proofs
        .iter()
        .enumerate()
        .map(|(i, proof)| {
            let (addr, host, proof) = (replicas[(i + 1) % 3].0, host.clone(), proof.clone());
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                get_feed_at(addr, &host, "SIGN-IN-WITH-X", &proof)
            })
        })
        .collect();
    let answers: Vec<_> = sent
        .into_iter()
        .map(|t| t.join().expect("request"))
        .collect();
    let served = answers.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        served,
        9,
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for refused in answers.iter().filter(|r| r.status != 200) {
        let challenge = decode(refused.header("payment-required").expect("challenge"));
        assert_eq!(challenge["error"], "bundle_used_up");
    }
    assert_eq!(origin.seen().len(), 2 + 9);

    // A proof one replica admitted is spent on every other.
    let used = answers
        .iter()
        .position(|r| r.status == 200)
        .map(|i| proofs[i].clone())
        .expect("a served proof");
    for (addr, _) in &replicas {
        let replayed = get_feed_at(*addr, &host, "SIGN-IN-WITH-X", &used);
        let challenge = decode(replayed.header("payment-required").expect("challenge"));
        assert_eq!(challenge["error"], "invalid_siwx_nonce");
    }
    assert_eq!(origin.seen().len(), 2 + 9);
}

#[test]
fn after_redis_loses_its_data_the_replicas_logs_bring_back_every_channel_charge_and_bundle_balance()
{
    let mut redis = RedisServer::start();
    let chain = channel_chain();
    // A second payer, with a channel and a bundle of its own.
    let other = signer(KEYS[4]).address();
    chain.mint(other, 10_000_000);
    let origin = Origin::start(|seen| {
        if seen.target.starts_with("/feed") {
            Reply::ok(r#"{"feed":1}"#)
        } else {
            Reply::ok(r#"{"tick":1}"#)
        }
    });
    // Channels on /ticks (1000 a call), a ten-call bundle on /feed; each replica settles
    // with a key of its own.
    let settlers = [SETTLER_KEY, KEYS[3], KEYS[5]];
    let mut replicas: Vec<(std::path::PathBuf, Addrs, tempfile::TempDir)> = Vec::new();
    for settler in settlers {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("channel.key");
        std::fs::write(&key_file, AUTHORIZER_KEY).expect("write key");
        let channels = format!(
            "    channels:\n      authorizer: \"{}\"\n      key_file: {}\n      claim_every_seconds: 3600\n      watch_every_seconds: 1\n",
            signer(AUTHORIZER_KEY).address(),
            key_file.display()
        );
        let yaml = format!(
            "{}{}{}{}  routes:\n{}    - {{name: feed, path: /feed, accepts: [{{network: base-sepolia}}], bundle: {{price: \"{BUNDLE_PRICE}\", calls: 10}}}}\n",
            upstream_yaml(origin.addr),
            chain.levy_yaml(),
            settlement_yaml_signed_by(dir.path(), settler, &channels),
            redis.state_yaml(),
            ticks_route(200_000),
        );
        let (config, addr, admin) = process_config(dir.path(), &yaml);
        replicas.push((config, (addr, admin), dir));
    }
    let start = |replicas: &[(std::path::PathBuf, Addrs, tempfile::TempDir)]| {
        let running: Vec<LevyProcess> = replicas.iter().map(|r| spawn_levy(&r.0)).collect();
        for (_, (addr, admin), _) in replicas {
            wait_listening(*addr);
            wait_listening(*admin);
        }
        running
    };
    let mut running = start(&replicas);
    let addr = |i: usize| replicas[i].1 .0;
    let host = addr(0).to_string();
    let payer = signer(KEYS[0]).address();

    // A channel: the official client opens it on replica 0 with three calls, then vouchers
    // go round the replicas up to 8000 charged.
    let opened = pay_channel(Client::TypeScript, &format!("http://{}/ticks", addr(0)), 3);
    assert_eq!(opened["statuses"]["200"], 3, "{opened}");
    let accepted = offered_at(addr(1));
    let channel = payer_channel(signer(AUTHORIZER_KEY).address());
    for (i, cumulative) in (4000..=8000).step_by(1000).enumerate() {
        let r = get_paying(
            addr(i % 3),
            &voucher_header(&accepted, &channel, cumulative),
        );
        assert_eq!(charged_cumulative(&r), cumulative.to_string());
    }
    // A bundle: bought (and drawn three times) by the official client on replica 0, then
    // drawn twice more on the others: five of ten calls left.
    let report = call(Bundles::TypeScript, &format!("http://{host}/feed"), 4);
    assert_eq!(
        paid_pattern(&report),
        vec![true, false, false, false],
        "{report}"
    );
    for i in [1, 2] {
        let proof = proof_header_at(addr(i), &host, payer, KEYS[0]);
        let drawn = get_feed_at(addr(i), &host, "SIGN-IN-WITH-X", &proof);
        assert_eq!(drawn.status, 200, "{}", drawn.text());
    }
    // The second payer: a channel charged 2000 on replica 1, a bundle bought there and
    // drawn once on replica 2 (nine of ten left).
    let second = [("PAYER_KEY", KEYS[4])];
    let opened = pay_channel_with(
        Client::TypeScript,
        &format!("http://{}/ticks", addr(1)),
        2,
        &second,
    );
    assert_eq!(opened["statuses"]["200"], 2, "{opened}");
    let bought = crate::support::interop::run_script(
        crate::support::interop::Runtime::Node,
        "pay-bundle.mjs",
        &[&format!("http://{}/feed", addr(1)), "1"],
        &second,
    );
    assert_eq!(paid_pattern(&bought), vec![true], "{bought}");
    let proof = proof_header_at(addr(2), &addr(1).to_string(), other, KEYS[4]);
    let drawn = get_feed_at(addr(2), &addr(1).to_string(), "SIGN-IN-WITH-X", &proof);
    assert_eq!(drawn.status, 200, "{}", drawn.text());

    // Redis comes back empty; the replicas notice and are restarted, as docs/src/replicas.md says.
    redis.restart_empty();
    for mut process in running.drain(..) {
        process.sigkill();
    }
    running = start(&replicas);

    // The channel stands where it stood: the charged 8000 is neither forgone nor charged
    // again, whichever replica is asked.
    let stale = refusal(&get_paying(
        addr(2),
        &voucher_header(&accepted, &channel, 8000),
    ));
    assert_eq!(
        stale["accepts"][0]["extra"]["channelState"]["chargedCumulativeAmount"], "8000",
        "{stale}"
    );
    let next = get_paying(addr(1), &voucher_header(&accepted, &channel, 9000));
    assert_eq!(charged_cumulative(&next), "9000");
    // The second payer's official client, starting afresh, adopts its channel at 2000 and
    // pays the next call at 3000, with no new deposit.
    let rpc = chain.rpc_url.clone();
    let again = pay_channel_with(
        Client::TypeScript,
        &format!("http://{}/ticks", addr(0)),
        1,
        &[("PAYER_KEY", KEYS[4]), ("X402_RPC_URL", rpc.as_str())],
    );
    assert_eq!(again["statuses"]["200"], 1, "{again}");
    assert_eq!(again["deposits"], 0, "{again}");
    assert_eq!(
        again["last"]["paymentResponse"]["extra"]["channelState"]["chargedCumulativeAmount"],
        "3000",
        "{again}"
    );
    claim_now(replicas[0].1 .1);
    assert_eq!(
        escrowed(&chain).1,
        9000,
        "the claim is not what was charged"
    );
    // The bundle has its five calls left.
    let proof = proof_header_at(addr(2), &host, payer, KEYS[0]);
    let drawn = get_feed_at(addr(2), &host, "SIGN-IN-WITH-X", &proof);
    assert_eq!(drawn.status, 200, "{}", drawn.text());
    assert_eq!(drawn.header("x-levy-bundle-remaining"), Some("4 calls"));
    let proof = proof_header_at(addr(0), &addr(1).to_string(), other, KEYS[4]);
    let drawn = get_feed_at(addr(0), &addr(1).to_string(), "SIGN-IN-WITH-X", &proof);
    assert_eq!(drawn.status, 200, "{}", drawn.text());
    assert_eq!(drawn.header("x-levy-bundle-remaining"), Some("8 calls"));
    drop(running);
}
