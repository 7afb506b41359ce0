//! x402 wire format: header names, the v1 and v2 `PaymentRequirements` shapes and the
//! base64 codec. Pure data; knows nothing about routes, sockets or pingora.
//!
//! Field names follow the x402 specification exactly (camelCase on the wire).

pub mod challenge;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::Serialize;
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

/// The only scheme levy issues.
pub const SCHEME_EXACT: &str = "exact";

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
}
