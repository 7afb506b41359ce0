//! Real signatures from the client module against the verifier, one test per rejection.

use alloy_primitives::{address, b256, Address, B256, U256};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::client::{sign, Payer, SignedAuthorization, Terms};
use crate::pricing::challenge::Challenge;
use crate::pricing::domain_separator;
use crate::scheme::verify;
use crate::x402::encode_header;

const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const OTHER_KEY: &str = "0x59c6995e998f97a0a0b7a9c2b5fda1c3b9c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5";
const NOW: u64 = 1_800_000_000;
const PAY_TO: Address = address!("209693Bc6afc0C5328bA36FaF03C514EF312287C");
const USDC: Address = address!("036CbD53842c5426634e7929541eC2318f3dCF7e");
const NONCE: B256 = b256!("1111111111111111111111111111111111111111111111111111111111111111");

fn requirement() -> Requirement {
    Requirement {
        network: "eip155:84532".into(),
        v1_network: Some("base-sepolia".into()),
        chain_id: 84532,
        network_name: "base-sepolia".into(),
        asset_name: "usdc".into(),
        asset: USDC,
        eip712_name: "USDC".into(),
        eip712_version: "2".into(),
        decimals: 6,
        amount: U256::from(1000),
        pay_to: PAY_TO,
        max_timeout_seconds: 300,
        domain_separator: domain_separator("USDC", "2", 84532, USDC),
        scheme: crate::pricing::Scheme::Exact,
    }
}

struct Route {
    requirements: Vec<Requirement>,
    issued: Vec<PaymentRequirementsV2>,
}

fn route() -> Route {
    route_of(vec![requirement()])
}

/// A route offering `requirements`, with the `accepts` entries its challenge issues.
fn route_of(requirements: Vec<Requirement>) -> Route {
    let issued = Challenge::new(&requirements, "", "", None)
        .accepts_v2()
        .to_vec();
    Route {
        requirements,
        issued,
    }
}

impl Route {
    fn accepted(&self) -> Value {
        serde_json::to_value(&self.issued[0]).unwrap()
    }

    fn verify(&self, header: &str) -> Result<VerifiedPayment, Rejection> {
        verify(
            header.as_bytes(),
            &self.requirements,
            &self.issued,
            NOW,
            &Policy::default(),
        )
    }
}

fn terms() -> Terms {
    Terms::from_v2(&route().accepted()).unwrap()
}

fn signed_with(
    key: &str,
    terms: &Terms,
    valid_after: u64,
    valid_before: u64,
) -> SignedAuthorization {
    sign(
        &Payer::from_hex(key).unwrap(),
        terms,
        valid_after,
        valid_before,
        NONCE,
    )
    .unwrap()
}

fn signed() -> SignedAuthorization {
    signed_with(KEY, &terms(), NOW - 600, NOW + 300)
}

fn payer() -> Address {
    Payer::from_hex(KEY).unwrap().address()
}

/// A v2 header whose JSON was edited by `edit` after signing.
fn tampered(edit: impl FnOnce(&mut Value)) -> String {
    let r = route();
    let mut doc =
        json!({"x402Version": 2, "accepted": r.accepted(), "payload": signed().payload_json()});
    edit(&mut doc);
    encode_header(doc.to_string().as_bytes())
}

fn rejected(header: &str) -> Rejection {
    route()
        .verify(header)
        .expect_err("payment should be refused")
}

alloy_sol_types::sol! {
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

#[test]
fn the_hand_written_digest_equals_alloys_eip712_signing_hash() {
    use alloy_sol_types::SolStruct;
    let message = TransferWithAuthorization {
        from: payer(),
        to: PAY_TO,
        value: U256::from(123_456),
        validAfter: U256::from(NOW - 600),
        validBefore: U256::from(NOW + 300),
        nonce: NONCE,
    };
    let domain = alloy_sol_types::eip712_domain! {
        name: "USDC",
        version: "2",
        chain_id: 84532,
        verifying_contract: USDC,
    };
    let mine = transfer_digest(
        &domain_separator("USDC", "2", 84532, USDC),
        payer(),
        PAY_TO,
        U256::from(123_456),
        NOW - 600,
        NOW + 300,
        NONCE,
    );
    assert_eq!(mine, message.eip712_signing_hash(&domain));
    assert_eq!(
        TRANSFER_WITH_AUTHORIZATION_TYPEHASH,
        alloy_primitives::keccak256(
            "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
        )
    );
}

#[test]
fn a_valid_v2_payment_verifies_to_its_payer_and_nonce_key() {
    let r = route();
    let v = r.verify(&signed().v2_header(&r.accepted(), None)).unwrap();
    assert_eq!(v.version, Version::V2);
    assert_eq!(v.payer, payer());
    assert_eq!(v.amount, U256::from(1000));
    assert_eq!(v.requirement, 0);
    assert_eq!(
        v.key,
        NonceKey {
            chain_id: 84532,
            asset: USDC,
            from: payer(),
            nonce: NONCE
        }
    );
}

#[test]
fn a_valid_v1_payment_verifies() {
    let v = route().verify(&signed().v1_header("base-sepolia")).unwrap();
    assert_eq!(v.version, Version::V1);
    assert_eq!(v.payer, payer());
}

#[test]
fn matching_ignores_address_case_and_extra_keys_the_client_added() {
    let header = tampered(|doc| {
        let a = &mut doc["accepted"];
        a["payTo"] = Value::String(PAY_TO.to_string().to_lowercase());
        a["asset"] = Value::String(format!("0x{}", hex::encode_upper(USDC)));
        a["extra"]["assetTransferMethod"] = json!("eip3009");
    });
    assert!(route().verify(&header).is_ok());
}

#[test]
fn oversize_non_base64_and_non_json_headers_are_invalid_payloads() {
    assert_eq!(
        rejected(&"A".repeat(MAX_HEADER_BYTES + 1)),
        Rejection::TooLarge
    );
    assert_eq!(rejected("!!!"), Rejection::NotBase64);
    assert!(matches!(
        rejected(&encode_header(b"{\"x\":1}")),
        Rejection::BadJson(_)
    ));
    for r in [
        Rejection::TooLarge,
        Rejection::NotBase64,
        Rejection::BadJson(String::new()),
    ] {
        assert_eq!(r.reason(), "invalid_payload");
    }
}

#[test]
fn an_unknown_x402_version_is_refused() {
    let r = rejected(&tampered(|doc| doc["x402Version"] = json!(3)));
    assert_eq!(r, Rejection::UnsupportedVersion(3));
    assert_eq!(r.reason(), "invalid_x402_version");
}

#[test]
fn a_v2_payment_without_accepted_is_refused() {
    let r = rejected(&tampered(|doc| {
        doc.as_object_mut().unwrap().remove("accepted");
    }));
    assert_eq!(r, Rejection::Malformed("accepted"));
    assert_eq!(r.reason(), "invalid_payload");
}

#[test]
fn another_scheme_is_refused() {
    let r = rejected(&tampered(|doc| doc["accepted"]["scheme"] = json!("upto")));
    assert_eq!(r.reason(), "unsupported_scheme");
}

#[test]
fn a_network_that_was_not_offered_is_refused() {
    let r = rejected(&tampered(|doc| {
        doc["accepted"]["network"] = json!("eip155:8453")
    }));
    assert_eq!(r, Rejection::UnofferedNetwork("eip155:8453".into()));
    assert_eq!(r.reason(), "invalid_network");
    let v1 = rejected(&signed().v1_header("base"));
    assert_eq!(v1.reason(), "invalid_network");
}

#[test]
fn accepted_requirements_that_differ_from_those_issued_are_refused() {
    for edit in [
        |d: &mut Value| d["accepted"]["amount"] = json!("999"),
        |d: &mut Value| d["accepted"]["maxTimeoutSeconds"] = json!(301),
        |d: &mut Value| {
            d["accepted"]["payTo"] = json!("0x0000000000000000000000000000000000000001")
        },
        |d: &mut Value| d["accepted"]["extra"]["name"] = json!("USD Coin"),
        |d: &mut Value| {
            d["accepted"]["extra"]
                .as_object_mut()
                .unwrap()
                .remove("version");
        },
    ] {
        let r = rejected(&tampered(edit));
        assert_eq!(r, Rejection::NoMatchingRequirements);
        assert_eq!(r.reason(), "invalid_payment_requirements");
    }
}

#[test]
fn an_authorization_to_someone_else_is_refused() {
    let mut t = terms();
    t.pay_to = address!("0000000000000000000000000000000000000bad");
    let r = route();
    let rejection = r
        .verify(&signed_with(KEY, &t, NOW - 600, NOW + 300).v2_header(&r.accepted(), None))
        .unwrap_err();
    assert_eq!(rejection.reason(), "invalid_exact_evm_recipient_mismatch");
}

#[test]
fn an_authorization_for_another_amount_is_refused() {
    let mut t = terms();
    t.amount = U256::from(999);
    let r = route();
    let rejection = r
        .verify(&signed_with(KEY, &t, NOW - 600, NOW + 300).v2_header(&r.accepted(), None))
        .unwrap_err();
    assert_eq!(rejection, Rejection::ValueMismatch);
    assert_eq!(rejection.reason(), "invalid_exact_evm_authorization_value");
}

#[test]
fn an_authorization_not_valid_yet_is_refused() {
    let r = route();
    let header = signed_with(KEY, &terms(), NOW + 10, NOW + 300).v2_header(&r.accepted(), None);
    let rejection = r.verify(&header).unwrap_err();
    assert_eq!(
        rejection.reason(),
        "invalid_exact_evm_payload_authorization_valid_after"
    );
}

#[test]
fn an_authorization_expiring_within_the_settlement_margin_is_refused() {
    let r = route();
    let margin = Policy::default().valid_before_margin_seconds;
    let header =
        signed_with(KEY, &terms(), NOW - 600, NOW + margin - 1).v2_header(&r.accepted(), None);
    let rejection = r.verify(&header).unwrap_err();
    assert_eq!(rejection, Rejection::ExpiresTooSoon);
    assert_eq!(
        rejection.reason(),
        "invalid_exact_evm_payload_authorization_valid_before"
    );
    let expired = signed_with(KEY, &terms(), NOW - 600, NOW - 1).v2_header(&r.accepted(), None);
    assert_eq!(r.verify(&expired).unwrap_err(), Rejection::ExpiresTooSoon);
    let at_margin =
        signed_with(KEY, &terms(), NOW - 600, NOW + margin).v2_header(&r.accepted(), None);
    assert!(r.verify(&at_margin).is_ok());
}

#[test]
fn an_authorization_valid_for_far_longer_than_max_timeout_is_refused() {
    let r = route();
    let header =
        signed_with(KEY, &terms(), NOW - 600, NOW + 300 + 601).v2_header(&r.accepted(), None);
    assert_eq!(r.verify(&header).unwrap_err(), Rejection::ExpiresTooLate);
}

#[test]
fn a_signature_by_another_key_is_refused() {
    let r = route();
    let mut forged = signed_with(OTHER_KEY, &terms(), NOW - 600, NOW + 300);
    forged.from = payer();
    let rejection = r
        .verify(&forged.v2_header(&r.accepted(), None))
        .unwrap_err();
    assert_eq!(rejection, Rejection::BadSignature);
    assert_eq!(rejection.reason(), "invalid_exact_evm_signature");
}

#[test]
fn a_signature_for_another_chain_or_token_is_refused() {
    let r = route();
    let mut other_chain = terms();
    other_chain.chain_id = 8453;
    let header =
        signed_with(KEY, &other_chain, NOW - 600, NOW + 300).v2_header(&r.accepted(), None);
    assert_eq!(r.verify(&header).unwrap_err(), Rejection::BadSignature);
    let mut other_token = terms();
    other_token.asset = address!("833589fCD6eDb6E08f4c7C32D4f71b54bdA02913");
    let header =
        signed_with(KEY, &other_token, NOW - 600, NOW + 300).v2_header(&r.accepted(), None);
    assert_eq!(r.verify(&header).unwrap_err(), Rejection::BadSignature);
}

#[test]
fn a_tampered_authorization_is_refused() {
    let r = rejected(&tampered(|doc| {
        doc["payload"]["authorization"]["validBefore"] = json!((NOW + 299).to_string())
    }));
    assert_eq!(r, Rejection::BadSignature);
}

/// Turns a 65-byte signature into its high-s twin (s to n - s, v flipped), which recovers
/// to the same signer.
fn make_high_s(signature: &mut [u8; 65]) {
    let n = U256::from_str_radix(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141",
        16,
    )
    .unwrap();
    let low_s = U256::from_be_slice(&signature[32..64]);
    signature[32..64].copy_from_slice(&(n - low_s).to_be_bytes::<32>());
    signature[64] = if signature[64] == 27 { 28 } else { 27 };
}

#[test]
fn a_high_s_signature_is_refused() {
    let mut s = signed();
    make_high_s(&mut s.signature);
    let r = route();
    let rejection = r.verify(&s.v2_header(&r.accepted(), None)).unwrap_err();
    assert_eq!(rejection, Rejection::HighS);
    assert_eq!(rejection.reason(), "invalid_exact_evm_signature");
}

#[test]
fn a_high_s_signature_is_refused_inline_even_with_a_chain_to_ask() {
    let mut s = signed();
    make_high_s(&mut s.signature);
    let header = s.v2_header(&route().accepted(), None);
    assert_eq!(
        verify_with_contract_wallets(&header).map(|v| v.signature),
        Err(Rejection::HighS)
    );
}

#[test]
fn a_smart_wallet_signature_is_refused_with_a_reason() {
    let r = rejected(&tampered(|doc| {
        doc["payload"]["signature"] = json!(format!("0x{}", "ab".repeat(200)))
    }));
    assert_eq!(r, Rejection::SmartWalletSignature);
}

#[test]
fn malformed_fields_name_the_field() {
    for (path, value, field) in [
        ("nonce", json!("0x1234"), "authorization.nonce"),
        ("from", json!("0x12"), "authorization.from"),
        ("value", json!("1e3"), "authorization.value"),
        ("validBefore", json!("-5"), "authorization.validBefore"),
    ] {
        let r = rejected(&tampered(|doc| {
            doc["payload"]["authorization"][path] = value
        }));
        assert_eq!(r, Rejection::Malformed(field));
    }
    let r = rejected(&tampered(|doc| doc["payload"]["signature"] = json!("0xzz")));
    assert_eq!(r, Rejection::Malformed("payload.signature"));
}

#[test]
fn numbers_sent_as_json_numbers_are_accepted() {
    let s = signed();
    let header = tampered(|doc| {
        doc["payload"]["authorization"]["value"] = json!(1000);
        doc["payload"]["authorization"]["validBefore"] = json!(s.valid_before);
    });
    assert!(route().verify(&header).is_ok());
}

#[test]
fn url_safe_unpadded_base64_is_accepted() {
    use base64::Engine as _;
    let r = route();
    let standard = signed().v2_header(&r.accepted(), None);
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&standard)
        .unwrap();
    let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    assert!(r.verify(&url_safe).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_are_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let r = route();
        prop_assert!(verify(&bytes, &r.requirements, &r.issued, NOW, &Policy::default()).is_err());
    }

    #[test]
    fn any_base64_of_any_json_like_text_is_refused_without_panicking(text in ".{0,600}") {
        let r = route();
        let header = encode_header(text.as_bytes());
        prop_assert!(verify(header.as_bytes(), &r.requirements, &r.issued, NOW, &Policy::default()).is_err());
    }
}

mod hex {
    pub fn encode_upper(a: super::Address) -> String {
        a.as_slice().iter().map(|b| format!("{b:02X}")).collect()
    }
}

fn verify_with_contract_wallets(header: &str) -> Result<VerifiedPayment, Rejection> {
    let r = route();
    let policy = Policy {
        contract_signatures: true,
        ..Policy::default()
    };
    verify(header.as_bytes(), &r.requirements, &r.issued, NOW, &policy)
}

#[test]
fn with_a_chain_to_ask_a_signature_that_is_not_the_payers_is_handed_to_it_with_its_digest() {
    // Another key's signature over the same authorization: maybe a contract wallet's owner.
    let mut other = signed_with(
        "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
        &terms(),
        NOW - 600,
        NOW + 300,
    );
    other.from = payer();
    let header = other.v2_header(&route().accepted(), None);
    let verified = verify_with_contract_wallets(&header).expect("handed to the chain");
    let PayerSignature::Contract { bytes, digest } = verified.signature else {
        panic!("an ECDSA signature of another key was accepted inline");
    };
    assert_eq!(bytes, other.signature.to_vec());
    assert_eq!(
        digest,
        transfer_digest(
            &route().requirements[0].domain_separator,
            payer(),
            other.to,
            other.value,
            other.valid_after,
            other.valid_before,
            NONCE
        )
    );
    let long =
        tampered(|doc| doc["payload"]["signature"] = json!(format!("0x{}", "ab".repeat(200))));
    assert!(matches!(
        verify_with_contract_wallets(&long).map(|v| v.signature),
        Ok(PayerSignature::Contract { .. })
    ));
    // The payer's own signature stays on the inline path.
    let own = signed().v2_header(&route().accepted(), None);
    assert!(matches!(
        verify_with_contract_wallets(&own).map(|v| v.signature),
        Ok(PayerSignature::Ecdsa(_))
    ));
}

/// A metered route: one `upto` requirement with a 10 000 ceiling, settled by `BATCHER`.
mod upto_payments {
    use super::*;
    use crate::client::upto::{random_permit2_nonce, sign_upto, SignedUpto};

    const BATCHER: Address = address!("6e989C01a3e3A94C973A62280a72EC335598490e");

    fn route() -> Route {
        let mut requirement = requirement();
        requirement.amount = U256::from(10_000);
        requirement.scheme = crate::pricing::Scheme::upto(BATCHER, 84532);
        route_of(vec![requirement])
    }

    fn signed(key: &str) -> SignedUpto {
        let terms = Terms::from_v2(&route().accepted()).unwrap();
        sign_upto(
            &Payer::from_hex(key).unwrap(),
            &terms,
            BATCHER,
            NOW + 300,
            random_permit2_nonce(),
        )
        .unwrap()
    }

    fn with_permit(upto: SignedUpto, key: &str, nonce: u64) -> SignedUpto {
        let terms = Terms::from_v2(&route().accepted()).unwrap();
        upto.with_permit(&Payer::from_hex(key).unwrap(), &terms, U256::from(nonce))
            .unwrap()
    }

    fn header(upto: &SignedUpto) -> String {
        upto.v2_header(&route().accepted())
    }

    /// The header of `upto` with its permit's `info` edited by `edit` after signing.
    fn permit_edited(upto: &SignedUpto, edit: impl FnOnce(&mut Value)) -> String {
        let mut upto = upto.clone();
        if let Some(info) = upto.permit2612.as_mut() {
            edit(info);
        }
        header(&upto)
    }

    #[test]
    fn a_signed_upto_payment_verifies_to_its_ceiling_keyed_under_permit2() {
        let upto = signed(KEY);
        let verified = route().verify(&header(&upto)).unwrap();
        assert_eq!(verified.payer, payer());
        assert_eq!(verified.amount, U256::from(10_000));
        assert_eq!(verified.key.asset, crate::x402::PERMIT2_ADDRESS);
        assert_eq!(
            verified.authorized,
            Authorized::Upto {
                facilitator: BATCHER,
                token: USDC,
                permit2612: None
            }
        );
    }

    #[test]
    fn an_eip2612_permit_from_the_payer_is_carried_with_its_nonce() {
        let upto = with_permit(signed(KEY), KEY, 7);
        let verified = route().verify(&header(&upto)).unwrap();
        let Authorized::Upto {
            permit2612: Some(permit),
            ..
        } = verified.authorized
        else {
            panic!("the permit was dropped: {verified:?}");
        };
        assert_eq!(permit.nonce, U256::from(7));
        assert_eq!(permit.value, U256::from(10_000));
        assert_eq!(permit.deadline, NOW + 300);
        assert!(permit.v == 27 || permit.v == 28);
    }

    #[test]
    fn a_permit_signed_by_another_key_or_for_another_nonce_is_refused() {
        let forged = with_permit(signed(KEY), OTHER_KEY, 0);
        assert_eq!(
            route().verify(&header(&forged)).unwrap_err(),
            Rejection::Eip2612Signature
        );
        let renumbered = permit_edited(&with_permit(signed(KEY), KEY, 0), |info| {
            info["nonce"] = json!("1")
        });
        assert_eq!(
            route().verify(&renumbered).unwrap_err().reason(),
            "invalid_eip2612_signature"
        );
    }

    #[test]
    fn a_permit_that_does_not_fit_its_payment_is_refused_with_the_reason_that_says_why() {
        let upto = with_permit(signed(KEY), KEY, 0);
        let cases: [(&str, Value, &str); 5] = [
            ("from", json!(format!("{PAY_TO}")), "eip2612_from_mismatch"),
            (
                "asset",
                json!(format!("{PAY_TO}")),
                "eip2612_asset_mismatch",
            ),
            (
                "spender",
                json!(format!("{PAY_TO}")),
                "eip2612_spender_not_permit2",
            ),
            ("amount", json!("9999"), "permit2_2612_amount_mismatch"),
            (
                "deadline",
                json!(NOW.to_string()),
                "eip2612_deadline_expired",
            ),
        ];
        for (field, value, reason) in cases {
            let edited = permit_edited(&upto, |info| info[field] = value.clone());
            assert_eq!(
                route().verify(&edited).unwrap_err().reason(),
                reason,
                "{field}"
            );
        }
        let garbled = permit_edited(&upto, |info| info["signature"] = json!("0x12"));
        assert_eq!(
            route().verify(&garbled).unwrap_err(),
            Rejection::Eip2612Malformed("info.signature")
        );
    }

    #[test]
    fn the_402_declaration_echoed_back_without_a_permit_is_not_a_permit() {
        let upto = signed(KEY);
        let mut doc = json!({"x402Version": 2, "accepted": route().accepted(), "payload": upto.payload_json()});
        doc["extensions"] =
            json!({"eip2612GasSponsoring": {"info": {"description": "…", "version": "1"}}});
        let verified = route()
            .verify(&encode_header(doc.to_string().as_bytes()))
            .unwrap();
        assert!(matches!(
            verified.authorized,
            Authorized::Upto {
                permit2612: None,
                ..
            }
        ));
    }
}
