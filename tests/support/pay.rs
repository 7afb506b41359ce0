//! Paying through levy the way a client does: read the 402, sign for an offered
//! requirement, send the header.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use levy::client::{random_nonce, sign, Payer, SignedAuthorization, Terms};
use serde_json::Value;

use super::Levy;

/// anvil's first development key; any key works for local verification.
pub const PAYER_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

pub fn payer() -> Payer {
    Payer::from_hex(PAYER_KEY).expect("payer key")
}

/// Decodes a base64 JSON header value.
pub fn decode(header: &str) -> Value {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(header)
        .expect("base64 header");
    serde_json::from_slice(&bytes).expect("JSON header")
}

/// The v2 `PaymentRequired` levy answers for `path`.
pub fn challenge(levy: &Levy, path: &str) -> Value {
    challenge_at(levy.addr, path)
}

/// The v2 `PaymentRequired` the levy listening on `addr` answers for `path`.
pub fn challenge_at(addr: std::net::SocketAddr, path: &str) -> Value {
    let response = super::request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: levy.test\r\n\r\n"),
    );
    assert_eq!(response.status, 402, "{path} is not priced");
    decode(
        response
            .header("payment-required")
            .expect("PAYMENT-REQUIRED"),
    )
}

/// A fresh authorization for the first requirement of `path`'s challenge, valid from ten
/// minutes ago for `maxTimeoutSeconds`, as the reference clients sign.
pub fn authorize(levy: &Levy, path: &str) -> (SignedAuthorization, Value) {
    let challenge = challenge(levy, path);
    let accepted = challenge["accepts"][0].clone();
    let terms = Terms::from_v2(&accepted).expect("terms");
    let timeout = accepted["maxTimeoutSeconds"]
        .as_u64()
        .expect("maxTimeoutSeconds");
    let signed = sign(
        &payer(),
        &terms,
        now() - 600,
        now() + timeout,
        random_nonce(),
    )
    .expect("sign");
    (signed, accepted)
}

/// A fresh v2 `PAYMENT-SIGNATURE` value for `path`.
pub fn v2_payment(levy: &Levy, path: &str) -> String {
    let (signed, accepted) = authorize(levy, path);
    signed.v2_header(&accepted, None)
}

/// A raw GET carrying `header: value`.
pub fn paid_get(path: &str, header: &str, value: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: levy.test\r\n{header}: {value}\r\n\r\n")
}

/// `header` (a `PAYMENT-SIGNATURE`) with the payment id `id` in its extensions
/// (`payment-identifier`).
pub fn with_id(header: &str, id: &str) -> String {
    use base64::Engine as _;
    let mut payload = decode(header);
    payload["extensions"] =
        serde_json::json!({"payment-identifier": {"info": {"required": false, "id": id}}});
    base64::engine::general_purpose::STANDARD.encode(payload.to_string())
}

/// A raw POST of a JSON `body` carrying `PAYMENT-SIGNATURE: payment`.
pub fn paid_post(path: &str, payment: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: levy.test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nPAYMENT-SIGNATURE: {payment}\r\n\r\n{body}",
        body.len()
    )
}

/// The x402 reason of a refusal: the `error` of the `402`'s challenge header.
pub fn refusal_reason(response: &super::Response) -> String {
    assert_eq!(response.status, 402, "{}", response.text());
    decode(response.header("payment-required").expect("challenge"))["error"]
        .as_str()
        .expect("error")
        .to_owned()
}

/// An authorization signed by `key` for `accepted` (a challenge's requirement), valid from
/// ten minutes ago until `seconds` from now.
pub fn signed_until(accepted: &Value, key: &str, seconds: u64) -> SignedAuthorization {
    let terms = Terms::from_v2(accepted).expect("terms");
    let payer = Payer::from_hex(key).expect("key");
    sign(&payer, &terms, now() - 600, now() + seconds, random_nonce()).expect("sign")
}

/// A `PAYMENT-SIGNATURE` for `levy`'s `path`, signed by `key`, valid for `seconds` from now.
pub fn valid_for(levy: &Levy, path: &str, key: &str, seconds: u64) -> String {
    let accepted = challenge(levy, path)["accepts"][0].clone();
    signed_until(&accepted, key, seconds).v2_header(&accepted, None)
}

/// Turns a 65-byte signature into its high-s twin (s to n - s, v flipped): it still
/// recovers to the signer, but tokens refuse it.
pub fn make_high_s(signature: &mut [u8; 65]) {
    let n = alloy::primitives::U256::from_str_radix(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141",
        16,
    )
    .expect("n");
    let s = alloy::primitives::U256::from_be_slice(&signature[32..64]);
    signature[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
    signature[64] = if signature[64] == 27 { 28 } else { 27 };
}

/// A fresh authorization signed by `key` for the first requirement of `challenge`.
pub fn sign_for(challenge: &Value, key: &str) -> (SignedAuthorization, String) {
    let accepted = challenge["accepts"][0].clone();
    let terms = Terms::from_v2(&accepted).expect("terms");
    let timeout = accepted["maxTimeoutSeconds"]
        .as_u64()
        .expect("maxTimeoutSeconds");
    let payer = Payer::from_hex(key).expect("key");
    let signed = sign(&payer, &terms, now() - 600, now() + timeout, random_nonce()).expect("sign");
    let header = signed.v2_header(&accepted, None);
    (signed, header)
}

/// A `PAYMENT-SIGNATURE` for the first (`upto`) requirement of `path`'s challenge at `addr`:
/// a Permit2 ceiling signed by `key` with levy's Rust signer, valid for most of
/// `maxTimeoutSeconds`.
pub fn upto_payment(addr: std::net::SocketAddr, path: &str, key: &str) -> String {
    upto_payment_until(addr, path, key, None)
}

/// As [`upto_payment`], with the Permit2 `deadline` given (unix seconds) instead of the
/// longest the route allows.
pub fn upto_payment_until(
    addr: std::net::SocketAddr,
    path: &str,
    key: &str,
    deadline: Option<u64>,
) -> String {
    use levy::client::upto::{facilitator, random_permit2_nonce, sign_upto};
    let challenge = challenge_at(addr, path);
    let accepted = challenge["accepts"][0].clone();
    assert_eq!(accepted["scheme"], "upto", "{path} is not metered");
    let terms = Terms::from_v2(&accepted).expect("terms");
    let timeout = accepted["maxTimeoutSeconds"].as_u64().expect("timeout");
    let signed = sign_upto(
        &Payer::from_hex(key).expect("key"),
        &terms,
        facilitator(&accepted).expect("facilitatorAddress"),
        deadline.unwrap_or(now() + timeout - 30),
        random_permit2_nonce(),
    )
    .expect("sign");
    signed.v2_header(&accepted)
}
