//! x402 wire format: header names, the v1 and v2 `PaymentRequirements` shapes and the
//! base64 codec. Pure data; knows nothing about routes, sockets or pingora.
//!
//! Field names follow the x402 specification exactly (camelCase on the wire).

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// v2 402 header carrying base64 JSON of [`PaymentRequiredV2`].
pub const PAYMENT_REQUIRED: &str = "payment-required";
/// v2 request header carrying the client's base64 JSON payment payload.
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
/// v1 request header carrying the client's base64 JSON payment payload.
pub const X_PAYMENT: &str = "x-payment";
/// v2 response header carrying the settlement result.
pub const PAYMENT_RESPONSE: &str = "payment-response";
/// v1 response header carrying the settlement result.
pub const X_PAYMENT_RESPONSE: &str = "x-payment-response";

/// The fixed-price scheme: an EIP-3009 authorization for the exact price.
pub const SCHEME_EXACT: &str = "exact";
/// The metered scheme: a Permit2 authorization for a ceiling; the charge is fixed after the
/// response.
pub const SCHEME_UPTO: &str = "upto";
/// The channel scheme: vouchers against a deposit in `x402BatchSettlement`.
pub const SCHEME_BATCH: &str = "batch-settlement";

/// Permit2's canonical address (the same on every EVM chain).
pub const PERMIT2_ADDRESS: alloy_primitives::Address =
    alloy_primitives::address!("000000000022D473030F116dDEE9F6B43aC78BA3");
/// x402's `upto` proxy's canonical address: the Permit2 spender every `upto` payment names.
pub const UPTO_PROXY_ADDRESS: alloy_primitives::Address =
    alloy_primitives::address!("4020A4f3b7b90ccA423B9fabCc0CE57C6C240002");

/// The x402 reason strings of the `exact` EVM scheme that facilitators emit (spec §9 and the
/// reference SDKs): the only facilitator words levy repeats to clients and in metrics.
pub const STANDARD_REASONS: &[&str] = &[
    "insufficient_funds",
    "invalid_network",
    "invalid_payment",
    "invalid_scheme",
    "invalid_exact_evm_scheme",
    "invalid_exact_evm_network_mismatch",
    "invalid_exact_evm_missing_eip712_domain",
    "invalid_exact_evm_recipient_mismatch",
    "invalid_exact_evm_signature",
    "invalid_exact_evm_payload_signature",
    "invalid_exact_evm_payload_authorization_valid_before",
    "invalid_exact_evm_payload_authorization_valid_after",
    "invalid_exact_evm_authorization_value",
    "invalid_exact_evm_payload_authorization_value",
    "invalid_exact_evm_payload_recipient_mismatch",
    "invalid_exact_evm_payload_undeployed_smart_wallet",
    "invalid_exact_evm_transaction_failed",
    "invalid_exact_evm_token_name_mismatch",
    "invalid_exact_evm_token_version_mismatch",
    "invalid_exact_evm_eip3009_not_supported",
    "invalid_exact_evm_nonce_already_used",
    "invalid_exact_evm_insufficient_balance",
    "invalid_exact_evm_transaction_simulation_failed",
];

/// `error` of a v2 challenge when no payment was sent (what the reference server says).
pub const V2_PAYMENT_REQUIRED_ERROR: &str = "Payment required";
/// `error` of a v1 challenge when no payment was sent (what the v1 reference server says).
pub const V1_PAYMENT_REQUIRED_ERROR: &str = "X-PAYMENT header is required";

/// One v2 `PaymentRequirements` entry, exactly as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirementsV2 {
    pub scheme: String,
    /// CAIP-2 network id, e.g. `eip155:84532`.
    pub network: String,
    /// Atomic units as a decimal string.
    pub amount: String,
    /// Token contract address, checksummed.
    pub asset: String,
    /// Recipient address, checksummed.
    pub pay_to: String,
    pub max_timeout_seconds: u64,
    /// EIP-712 domain `name` and `version` of the token.
    pub extra: Map<String, Value>,
}

/// One v1 `PaymentRequirements` entry. `resource` is filled per request, so it is kept out of
/// this struct and spliced in by the challenge renderer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRequirementsV1 {
    pub scheme: String,
    /// v1 network name, e.g. `base-sepolia`.
    pub network: String,
    pub max_amount_required: String,
    pub description: String,
    pub mime_type: String,
    pub pay_to: String,
    pub max_timeout_seconds: u64,
    pub asset: String,
    pub extra: Map<String, Value>,
}

/// A client's payment, v1 or v2, as decoded from `X-PAYMENT` or `PAYMENT-SIGNATURE`. One
/// struct for both shapes: v1 carries `scheme` and `network`, v2 carries `accepted`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload {
    pub x402_version: u64,
    /// v1 only.
    #[serde(default)]
    pub scheme: Option<String>,
    /// v1 only: the v1 network name.
    #[serde(default)]
    pub network: Option<String>,
    /// v2 only: the requirement the client chose, echoed back.
    #[serde(default)]
    pub accepted: Option<AcceptedRequirements>,
    pub payload: EvmPayload,
    /// v2 extensions the client answered (e.g. `eip2612GasSponsoring`), kept as sent.
    #[serde(default)]
    pub extensions: Option<Map<String, Value>>,
}

/// The v2 `accepted` object. Numbers and strings are kept as the client sent them and
/// compared against the issued requirement.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedRequirements {
    pub scheme: String,
    pub network: String,
    pub amount: String,
    pub asset: String,
    pub pay_to: String,
    pub max_timeout_seconds: Value,
    #[serde(default)]
    pub extra: Option<Map<String, Value>>,
}

/// An EVM payload: a signature and, by scheme, an EIP-3009 `authorization` (`exact`) or a
/// `permit2Authorization` (`upto`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvmPayload {
    pub signature: String,
    #[serde(default)]
    pub authorization: Option<Authorization>,
    #[serde(default)]
    pub permit2_authorization: Option<Permit2Authorization>,
}

/// A Permit2 `PermitWitnessTransferFrom` as the `upto` clients send it: numbers as decimal
/// strings (the nonce too; hex is accepted).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permit2Authorization {
    pub from: String,
    pub permitted: TokenPermissions,
    pub spender: String,
    pub nonce: Number,
    pub deadline: Number,
    pub witness: UptoWitness,
}

/// Permit2's `TokenPermissions`: the token and the ceiling.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenPermissions {
    pub token: String,
    pub amount: Number,
}

/// The `upto` witness: who receives, who alone may settle, and from when.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UptoWitness {
    pub to: String,
    pub facilitator: String,
    pub valid_after: Number,
}

/// The `eip2612GasSponsoring` extension key: a payer without a Permit2 allowance signs an
/// EIP-2612 permit approving Permit2, and the settler runs it before the transfer.
pub const EIP2612_GAS_SPONSORING: &str = "eip2612GasSponsoring";
/// The discovery extension catalogues read a resource's input and output from.
pub const BAZAAR: &str = "bazaar";

/// The `info` of a client's `eip2612GasSponsoring` answer: an EIP-2612 `Permit(owner =
/// from, spender, value = amount, nonce, deadline)` of `asset`, signed by `from`.
#[derive(Debug, Clone, Deserialize)]
pub struct Eip2612Info {
    pub from: String,
    pub asset: String,
    pub spender: String,
    pub amount: Number,
    pub nonce: Number,
    pub deadline: Number,
    pub signature: String,
}

/// `TransferWithAuthorization` fields as sent: addresses and the nonce as hex strings,
/// numbers as decimal strings (or JSON numbers, which some clients send).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    pub from: String,
    pub to: String,
    pub value: Number,
    pub valid_after: Number,
    pub valid_before: Number,
    pub nonce: String,
}

/// A number that arrived as a JSON string or a JSON number, kept as its decimal text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number(pub String);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(s) => Ok(Number(s)),
            Value::Number(n) => Ok(Number(n.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "expected a decimal number, got {other}"
            ))),
        }
    }
}

/// What levy answers in `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE` for an accepted payment.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    pub success: bool,
    /// The settlement transaction hash; empty while settlement is deferred.
    pub transaction: String,
    /// CAIP-2 for v2 payloads, the v1 name for v1 payloads.
    pub network: String,
    pub payer: String,
    /// `upto`: the amount charged (atomic units), once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
    /// Scheme-specific facts (`batch-settlement`: `chargedAmount` and `channelState`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

impl SettleResponse {
    /// The header value: the JSON, base64-encoded.
    pub fn header_value(&self) -> String {
        encode_header(serde_json::to_string(self).unwrap_or_default().as_bytes())
    }
}

/// Encodes bytes as x402 header values are encoded: standard alphabet, padded.
pub fn encode_header(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes a base64 header value leniently: standard or URL-safe alphabet, padded or not.
/// Returns `None` when no engine accepts the input.
pub fn decode_header(value: &[u8]) -> Option<Vec<u8>> {
    let trimmed = value.trim_ascii();
    [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(trimmed).ok())
}

/// The `builder-code` extension's key: ERC-8021 attribution on settlement transactions.
pub const BUILDER_CODE: &str = "builder-code";

/// The `builder-code` declaration of a 402: the app's code and services' codes, for a
/// facilitator to attribute the transaction it settles with.
pub fn builder_code_declaration(app: &str, services: &[String]) -> Value {
    let code = serde_json::json!({"type": "string", "pattern": "^[a-z0-9_]{1,32}$"});
    let mut info = serde_json::json!({ "a": app });
    if !services.is_empty() {
        info["s"] = serde_json::json!(services);
    }
    serde_json::json!({
        "info": info,
        "schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"a": code, "w": code, "s": {"type": "array", "maxItems": 11, "items": code}},
            "additionalProperties": false,
        },
    })
}

/// The ERC-8021 suffix (schema 2) that attributes a transaction to an app (`a`) and to
/// services (`s`): a CBOR map, its length (2 bytes), the schema id and the 16-byte marker.
/// Appended to calldata, it is ignored by the contract called and read from the end.
/// Codes are 1 to 32 of `a-z0-9_` (the config checks them).
pub fn builder_code_suffix(app: &str, services: &[String]) -> Vec<u8> {
    fn head(major: u8, len: usize, out: &mut Vec<u8>) {
        // Codes and lists are short: a length fits the one-byte forms.
        match u8::try_from(len) {
            Ok(small) if small <= 23 => out.push(major << 5 | small),
            Ok(byte) => out.extend([major << 5 | 24, byte]),
            Err(_) => out.extend([major << 5 | 25, (len >> 8) as u8, len as u8]),
        }
    }
    fn text(value: &str, out: &mut Vec<u8>) {
        head(3, value.len(), out);
        out.extend_from_slice(value.as_bytes());
    }
    let mut cbor = Vec::new();
    head(5, if services.is_empty() { 1 } else { 2 }, &mut cbor);
    text("a", &mut cbor);
    text(app, &mut cbor);
    if !services.is_empty() {
        text("s", &mut cbor);
        head(4, services.len(), &mut cbor);
        for service in services {
            text(service, &mut cbor);
        }
    }
    let len = cbor.len();
    cbor.extend([(len >> 8) as u8, len as u8, 2]);
    cbor.extend(std::iter::repeat_n([0x80, 0x21], 8).flatten());
    cbor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_round_trip_through_standard_padded_base64() {
        let encoded = encode_header(b"{\"a\":1}?");
        assert!(encoded.ends_with('='));
        assert_eq!(decode_header(encoded.as_bytes()).unwrap(), b"{\"a\":1}?");
    }

    #[test]
    fn decoding_accepts_url_safe_and_unpadded_input() {
        let raw = [0xfb, 0xff, 0xfe, 0x01];
        for s in [
            STANDARD.encode(raw),
            STANDARD_NO_PAD.encode(raw),
            URL_SAFE.encode(raw),
            URL_SAFE_NO_PAD.encode(raw),
        ] {
            assert_eq!(decode_header(s.as_bytes()).unwrap(), raw, "{s}");
        }
        assert!(decode_header(b"not base64 !").is_none());
    }

    #[test]
    fn the_builder_code_suffix_is_the_one_the_official_helper_encodes() {
        // encodeBuilderCodeSuffix({a: "acme", s: ["levy"]}) and ({a: "acme"}), @x402/extensions 2.27.
        let hex = |bytes: Vec<u8>| alloy_primitives::hex::encode(bytes);
        assert_eq!(
            hex(builder_code_suffix("acme", &["levy".to_owned()])),
            "a261616461636d65617381646c65767900100280218021802180218021802180218021"
        );
        assert_eq!(
            hex(builder_code_suffix("acme", &[])),
            "a161616461636d6500080280218021802180218021802180218021"
        );
    }
}
