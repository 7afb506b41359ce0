//! An x402 facilitator as a settlement back end: `POST /settle` (and optionally `/verify`)
//! with the client's original payment payload and the matched requirement, `GET /supported`
//! at start. A `success: false` on HTTP 200 is a failure, as is any answer without a
//! transaction hash.

use std::time::Duration;

use alloy::primitives::B256;
use serde_json::{json, Value};

use super::PaymentRecord;

/// What a facilitator said about one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FacilitatorOutcome {
    /// Settled in this transaction.
    Settled(B256),
    /// Refused, with the facilitator's reason.
    Refused(String),
    /// No clear answer (network error, 5xx, unreadable body): try again later.
    Unavailable(String),
}

/// What a facilitator's `/verify` said about one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// Invalid, with the facilitator's reason.
    Invalid(String),
    /// No clear answer (network error, an HTTP error, an unreadable body): says nothing
    /// about the payment.
    Unavailable(String),
}

/// Why a facilitator could not be asked, or its answer not read. Says nothing about a
/// payment.
#[derive(Debug, thiserror::Error)]
pub enum FacilitatorError {
    #[error("cannot build the facilitator client: {0}")]
    Client(reqwest::Error),
    #[error("cannot reach the facilitator: {0}")]
    Unreachable(reqwest::Error),
    #[error("unreadable answer (HTTP {status}): {source}")]
    Body { status: u16, source: reqwest::Error },
}

/// What levy journaled of a payment is not enough to send it to a facilitator.
#[derive(Debug, thiserror::Error)]
pub enum NotSendable {
    #[error("no {0} journaled")]
    Missing(&'static str),
    #[error("journaled payload: {0}")]
    Payload(#[from] serde_json::Error),
}

/// A facilitator endpoint.
pub struct Facilitator {
    base: String,
    http: reqwest::Client,
}

impl Facilitator {
    /// A client of the facilitator at `url`, each request bounded by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, FacilitatorError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(FacilitatorError::Client)?;
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            http,
        })
    }

    fn body(record: &PaymentRecord) -> Result<Value, NotSendable> {
        let payload = record.payload.as_deref();
        let payload: Value = serde_json::from_str(payload.ok_or(NotSendable::Missing("payload"))?)?;
        let requirement = record
            .requirement
            .clone()
            .ok_or(NotSendable::Missing("requirement"))?;
        Ok(json!({
            "x402Version": payload.get("x402Version").cloned().unwrap_or(json!(2)),
            "paymentPayload": payload,
            "paymentRequirements": requirement,
        }))
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), FacilitatorError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .map_err(FacilitatorError::Unreachable)?;
        let status = response.status().as_u16();
        let value = response
            .json::<Value>()
            .await
            .map_err(|source| FacilitatorError::Body { status, source })?;
        Ok((status, value))
    }

    /// `POST /settle` for one payment.
    pub async fn settle(&self, record: &PaymentRecord) -> FacilitatorOutcome {
        let body = match Self::body(record) {
            Ok(body) => body,
            Err(e) => return FacilitatorOutcome::Refused(e.to_string()),
        };
        match self.post("/settle", &body).await {
            Err(e) => FacilitatorOutcome::Unavailable(e.to_string()),
            Ok((status, value)) => {
                let tx = value["transaction"]
                    .as_str()
                    .and_then(|t| t.parse::<B256>().ok());
                match (value["success"].as_bool(), tx) {
                    (Some(true), Some(hash)) => FacilitatorOutcome::Settled(hash),
                    (Some(false), _) => {
                        let why = reason(&value, "errorReason");
                        if PERMANENT_REASONS.contains(&why.as_str()) {
                            FacilitatorOutcome::Refused(why)
                        } else {
                            // Its own RPC, gas or nonce trouble: the authorization is still
                            // good, try again later.
                            FacilitatorOutcome::Unavailable(why)
                        }
                    }
                    // Rate limits, auth or edge errors, odd bodies: nothing says the payment
                    // is bad, so it is retried (and after max_attempts reviewed).
                    _ => FacilitatorOutcome::Unavailable(format!(
                        "unexpected answer (HTTP {status}): {value}"
                    )),
                }
            }
        }
    }

    /// `POST /verify` for one payment.
    pub async fn verify(&self, record: &PaymentRecord) -> Verdict {
        let body = match Self::body(record) {
            Ok(body) => body,
            Err(e) => return Verdict::Invalid(e.to_string()),
        };
        match self.post("/verify", &body).await {
            Err(e) => Verdict::Unavailable(e.to_string()),
            Ok((status, value)) => match value["isValid"].as_bool() {
                Some(true) => Verdict::Valid,
                Some(false) => Verdict::Invalid(reason(&value, "invalidReason")),
                None => Verdict::Unavailable(format!("HTTP {status}: {value}")),
            },
        }
    }

    /// `GET /supported`: the `(x402Version, scheme, network)` kinds it settles.
    pub async fn supported(&self) -> Result<Vec<(u64, String, String)>, FacilitatorError> {
        let response = self
            .http
            .get(format!("{}/supported", self.base))
            .send()
            .await
            .map_err(FacilitatorError::Unreachable)?;
        let status = response.status().as_u16();
        let value: Value = response
            .json()
            .await
            .map_err(|source| FacilitatorError::Body { status, source })?;
        Ok(value["kinds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| {
                Some((
                    k["x402Version"].as_u64()?,
                    k["scheme"].as_str()?.to_owned(),
                    k["network"].as_str()?.to_owned(),
                ))
            })
            .collect())
    }
}

/// Facilitator refusals that no retry can change: the payment itself is bad.
const PERMANENT_REASONS: &[&str] = &[
    "invalid_exact_evm_signature",
    "invalid_exact_evm_payload_signature",
    "invalid_exact_evm_recipient_mismatch",
    "invalid_exact_evm_payload_recipient_mismatch",
    "invalid_exact_evm_authorization_value",
    "invalid_exact_evm_payload_authorization_value",
    "invalid_exact_evm_payload_authorization_value_mismatch",
    "invalid_exact_evm_payload_authorization_valid_before",
    "invalid_exact_evm_nonce_already_used",
    "invalid_exact_evm_insufficient_balance",
    "insufficient_funds",
    "invalid_exact_evm_network_mismatch",
    "invalid_exact_evm_scheme",
    "invalid_exact_evm_missing_eip712_domain",
    "invalid_exact_evm_token_name_mismatch",
    "invalid_exact_evm_token_version_mismatch",
    "invalid_exact_evm_eip3009_not_supported",
    "invalid_network",
    "invalid_scheme",
];

fn reason(value: &Value, key: &str) -> String {
    value[key]
        .as_str()
        .unwrap_or("facilitator_refused")
        .to_owned()
}
