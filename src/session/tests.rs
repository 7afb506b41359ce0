use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use alloy_primitives::{address, Address, B256};

use super::*;

const PAYER: Address = address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
const NOW_MS: u64 = 1_795_000_000_000;

fn base(statement: Option<&str>) -> Proof {
    Proof {
        domain: "127.0.0.1:8080".into(),
        address: "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".into(),
        statement: statement.map(str::to_owned),
        uri: "http://127.0.0.1:8080/feed".into(),
        version: "1".into(),
        chain_id: "eip155:84532".into(),
        kind: "eip191".into(),
        nonce: "0123456789abcdef0123456789abcdef".into(),
        issued_at: "2026-11-21T09:30:00.000Z".into(),
        expiration_time: Some("2026-11-21T09:35:00.000Z".into()),
        not_before: None,
        request_id: None,
        resources: None,
        signature_scheme: None,
        signature: String::new(),
    }
}

#[test]
fn the_siwe_message_is_byte_for_byte_the_one_the_official_library_writes() {
    // Both strings were written by `createSIWxMessage` of the official extension package.
    assert_eq!(
        siwe_message(&base(Some("Sign in to use what you bought")), &PAYER, 84532),
        "127.0.0.1:8080 wants you to sign in with your Ethereum account:\n0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266\n\nSign in to use what you bought\n\nURI: http://127.0.0.1:8080/feed\nVersion: 1\nChain ID: 84532\nNonce: 0123456789abcdef0123456789abcdef\nIssued At: 2026-11-21T09:30:00.000Z\nExpiration Time: 2026-11-21T09:35:00.000Z"
    );
    let mut full = base(None);
    full.not_before = Some("2026-11-21T09:29:00.000Z".into());
    full.request_id = Some("r1".into());
    full.resources = Some(vec!["http://a/x".into(), "http://a/y".into()]);
    assert_eq!(
        siwe_message(&full, &PAYER, 84532),
        "127.0.0.1:8080 wants you to sign in with your Ethereum account:\n0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266\n\n\nURI: http://127.0.0.1:8080/feed\nVersion: 1\nChain ID: 84532\nNonce: 0123456789abcdef0123456789abcdef\nIssued At: 2026-11-21T09:30:00.000Z\nExpiration Time: 2026-11-21T09:35:00.000Z\nNot Before: 2026-11-21T09:29:00.000Z\nRequest ID: r1\nResources:\n- http://a/x\n- http://a/y"
    );
}

const EXPECTED: Expected<'static> = Expected {
    scope: "feed",
    resource_url: "http://127.0.0.1:8080/feed",
    chain_ids: &[84532],
};

/// A proof answering `issuer`'s challenge at `NOW_MS`, signed by anvil key 0.
fn answer(issuer: &Issuer, edit: impl FnOnce(&mut Proof)) -> Proof {
    let declaration = issuer.declaration(&EXPECTED, NOW_MS);
    let info = &declaration["info"];
    let mut proof = base(info["statement"].as_str());
    proof.domain = info["domain"].as_str().unwrap().into();
    proof.uri = info["uri"].as_str().unwrap().into();
    proof.nonce = info["nonce"].as_str().unwrap().into();
    proof.issued_at = info["issuedAt"].as_str().unwrap().into();
    proof.expiration_time = info["expirationTime"].as_str().map(str::to_owned);
    edit(&mut proof);
    let signer: PrivateKeySigner =
        "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
            .parse()
            .unwrap();
    let message = siwe_message(&proof, &PAYER, 84532);
    proof.signature = signer
        .sign_message_sync(message.as_bytes())
        .unwrap()
        .to_string();
    proof
}

#[test]
fn a_proof_of_levy_s_own_challenge_recovers_to_the_payer() {
    let issuer = Issuer::new(B256::repeat_byte(7));
    let proof = answer(&issuer, |_| {});
    assert_eq!(
        issuer.check(&proof, &EXPECTED, NOW_MS + 1000),
        Ok(ProofSigner::Eoa(PAYER))
    );
}

#[test]
fn each_broken_rule_gets_its_own_reason() {
    let issuer = Issuer::new(B256::repeat_byte(7));
    let cases: Vec<(Proof, u64, ProofError)> = vec![
        (
            answer(&issuer, |p| p.domain = "evil.example".into()),
            NOW_MS,
            ProofError::DomainMismatch,
        ),
        (
            answer(&issuer, |p| p.uri = "https://127.0.0.1:8080/feed".into()),
            NOW_MS,
            ProofError::UriMismatch,
        ),
        (
            answer(&issuer, |_| {}),
            NOW_MS + MAX_AGE_MS + 1,
            ProofError::TooOld,
        ),
        (answer(&issuer, |_| {}), NOW_MS - 1, ProofError::InFuture),
        // A nonce the client made up, or levy's for other times or another route.
        (
            answer(&issuer, |p| {
                p.nonce = "0123456789abcdef0123456789abcdef".into()
            }),
            NOW_MS,
            ProofError::Nonce,
        ),
        (
            answer(&issuer, |p| {
                p.expiration_time = Some(iso8601(NOW_MS + 3_600_000))
            }),
            NOW_MS,
            ProofError::Nonce,
        ),
        (
            answer(&issuer, |p| p.chain_id = "eip155:1".into()),
            NOW_MS,
            ProofError::UnsupportedChain,
        ),
        (
            answer(&issuer, |p| p.chain_id = "solana:x".into()),
            NOW_MS,
            ProofError::ChainId,
        ),
    ];
    for (proof, now, want) in cases {
        assert_eq!(
            issuer.check(&proof, &EXPECTED, now),
            Err(want.clone()),
            "{want}"
        );
    }
    let other_route = Expected {
        scope: "other",
        ..EXPECTED
    };
    assert_eq!(
        issuer.check(&answer(&issuer, |_| {}), &other_route, NOW_MS),
        Err(ProofError::Nonce)
    );
    // Another signer's signature, or the payer's over a different message: not an EOA's
    // proof, so only the chain may still take it (a contract wallet's), and without one it
    // is refused.
    let mut forged = answer(&issuer, |_| {});
    forged.address = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8".into();
    let signer = issuer.check(&forged, &EXPECTED, NOW_MS).unwrap();
    assert!(matches!(
        &signer,
        ProofSigner::Contract { address, chain_id: 84532, signature, .. }
            if address.to_string() == forged.address && signature.len() == 65
    ));
    assert_eq!(signer.eoa(), Err(ProofError::Signature));
    let mut altered = answer(&issuer, |_| {});
    altered.statement = Some("something else".into());
    assert_eq!(
        issuer
            .check(&altered, &EXPECTED, NOW_MS)
            .and_then(ProofSigner::eoa),
        Err(ProofError::Signature)
    );
    let mut short = answer(&issuer, |_| {});
    short.signature = "0x1234".into();
    assert_eq!(
        issuer.check(&short, &EXPECTED, NOW_MS),
        Err(ProofError::MalformedSignature)
    );
}

#[test]
fn a_calls_bundle_admits_what_was_bought_counting_calls_in_flight() {
    let quota = Quota::Calls(2);
    let mut b = Bundle::new(PAYER, "feed");
    assert_eq!(b.admits(quota, 0, 0), Err(Exhausted::UsedUp));
    b.buy(quota, 0);
    assert_eq!(b.admits(quota, 1, 0), Ok(()));
    assert_eq!(b.admits(quota, 2, 0), Err(Exhausted::UsedUp));
    b.debit(quota, 0);
    b.debit(quota, 0);
    assert_eq!(b.admits(quota, 0, 0), Err(Exhausted::UsedUp));
    b.buy(quota, 0);
    assert_eq!(b.remaining(quota, 0), 2);
}

#[test]
fn a_seconds_bundle_lapses_and_a_new_purchase_extends_a_live_one() {
    let quota = Quota::Seconds(60);
    let mut b = Bundle::new(PAYER, "feed");
    b.buy(quota, 1000);
    assert_eq!(b.admits(quota, 5, 1059), Ok(()));
    assert_eq!(b.admits(quota, 0, 1060), Err(Exhausted::Expired));
    b.buy(quota, 1030);
    assert_eq!(b.expires_at, 1120);
    b.buy(quota, 5000);
    assert_eq!(b.expires_at, 5060);
}

#[test]
fn a_bytes_bundle_admits_one_call_at_a_time() {
    let quota = Quota::Bytes(1000);
    let mut b = Bundle::new(PAYER, "feed");
    b.buy(quota, 0);
    assert_eq!(b.admits(quota, 0, 0), Ok(()));
    assert_eq!(b.admits(quota, 1, 0), Err(Exhausted::InUse));
    b.debit(quota, 1000);
    assert_eq!(b.admits(quota, 1, 0), Err(Exhausted::UsedUp));
}

#[test]
fn a_bytes_bundle_serves_the_call_that_crosses_the_line_then_stops() {
    let quota = Quota::Bytes(1000);
    let mut b = Bundle::new(PAYER, "feed");
    b.buy(quota, 0);
    b.debit(quota, 900);
    assert_eq!(b.admits(quota, 0, 0), Ok(()));
    b.debit(quota, 900);
    assert_eq!(b.admits(quota, 0, 0), Err(Exhausted::UsedUp));
    assert_eq!(b.remaining(quota, 0), 0);
}

#[test]
fn bundle_records_merge_to_the_same_state_in_any_order() {
    let quota = Quota::Calls(10);
    let mut early = Bundle::new(PAYER, "feed");
    early.buy(quota, 0);
    early.debit(quota, 0);
    let mut late = early.clone();
    late.buy(quota, 0);
    late.debit(quota, 0);
    let (mut a, mut b) = (early.clone(), late.clone());
    a.merge(&late);
    b.merge(&early);
    assert_eq!(a, b);
    assert_eq!((a.bought, a.used, a.purchases), (20, 2, 2));
}
