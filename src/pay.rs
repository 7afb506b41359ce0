//! `levy pay URL`: an operator's smoke test of the paying side. It requests the URL, reads
//! the 402 (the v2 `PAYMENT-REQUIRED` header, else the v1 body), signs an EIP-3009
//! authorization for the first `exact` requirement with the key it is given, retries once
//! with `PAYMENT-SIGNATURE` (or `X-PAYMENT`), and reports each step. It shares no parsing
//! with the verifier.

use std::fmt::Write as _;

use serde_json::Value;

use crate::client::{random_nonce, sign, Payer, SignedAuthorization, Terms};
use crate::x402::{
    decode_header, PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE, X_PAYMENT,
    X_PAYMENT_RESPONSE,
};

/// Why `levy pay` could not complete the flow.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    #[error("request failed: {0}")]
    Http(String),
    #[error("the 402 carries no payment requirements levy pay understands: {0}")]
    NoTerms(String),
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
}

/// What happened, step by step, and the final status.
#[derive(Debug, Clone)]
pub struct PayReport {
    pub lines: String,
    pub final_status: u16,
}

/// Requests `url`, pays if asked to, and reports.
pub async fn pay(url: &str, payer: &Payer) -> Result<PayReport, PayError> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| PayError::Http(e.to_string()))?;
    let mut lines = String::new();
    let first = http
        .get(url)
        .send()
        .await
        .map_err(|e| PayError::Http(e.to_string()))?;
    let _ = writeln!(lines, "GET {url} -> {}", first.status());
    if first.status().as_u16() != 402 {
        let status = first.status().as_u16();
        let body = first.text().await.unwrap_or_default();
        let _ = writeln!(lines, "no payment asked; body: {}", preview(&body));
        return Ok(PayReport {
            lines,
            final_status: status,
        });
    }
    let header = first
        .headers()
        .get(PAYMENT_REQUIRED)
        .and_then(|v| decode_header(v.as_bytes()))
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    let body: Value = first.json().await.unwrap_or(Value::Null);
    let (header_name, payment) = if let Some(required) = header {
        let accepted = first_exact(&required["accepts"])
            .ok_or_else(|| PayError::NoTerms("no exact requirement in PAYMENT-REQUIRED".into()))?;
        let signed = authorize(&mut lines, "v2", accepted, Terms::from_v2(accepted)?, payer)?;
        (
            PAYMENT_SIGNATURE,
            signed.v2_header(accepted, required.get("resource")),
        )
    } else if body["x402Version"] == 1 {
        let (requirement, chain_id) = body["accepts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["scheme"] == "exact")
            .find_map(|r| Some((r, crate::config::v1_chain_id(r["network"].as_str()?)?)))
            .ok_or_else(|| {
                PayError::NoTerms("no exact requirement on a known v1 network".into())
            })?;
        let terms = Terms::from_v1(requirement, chain_id)?;
        let signed = authorize(&mut lines, "v1", requirement, terms, payer)?;
        let network = requirement["network"].as_str().unwrap_or_default();
        (X_PAYMENT, signed.v1_header(network))
    } else {
        return Err(PayError::NoTerms(
            "neither a PAYMENT-REQUIRED header nor a v1 body".into(),
        ));
    };

    let second = http
        .get(url)
        .header(header_name, payment)
        .send()
        .await
        .map_err(|e| PayError::Http(e.to_string()))?;
    let status = second.status().as_u16();
    let _ = writeln!(
        lines,
        "GET {url} with {} -> {}",
        header_name.to_ascii_uppercase(),
        second.status()
    );
    let receipt = [PAYMENT_RESPONSE, X_PAYMENT_RESPONSE]
        .iter()
        .find_map(|name| second.headers().get(*name))
        .and_then(|v| decode_header(v.as_bytes()))
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    let refusal = second
        .headers()
        .get(PAYMENT_REQUIRED)
        .and_then(|v| decode_header(v.as_bytes()))
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    if let Some(receipt) = receipt {
        let _ = writeln!(lines, "payment response: {receipt}");
    }
    if let Some(refusal) = refusal {
        let _ = writeln!(lines, "refused: {}", refusal["error"]);
    }
    let text = second.text().await.unwrap_or_default();
    let _ = writeln!(lines, "body: {}", preview(&text));
    Ok(PayReport {
        lines,
        final_status: status,
    })
}

fn first_exact(accepts: &Value) -> Option<&Value> {
    accepts.as_array()?.iter().find(|r| r["scheme"] == "exact")
}

/// Signs for `requirement` as the reference clients do: valid from ten minutes ago for
/// `maxTimeoutSeconds`, with a random nonce; says so in the report.
fn authorize(
    lines: &mut String,
    version: &str,
    requirement: &Value,
    terms: Terms,
    payer: &Payer,
) -> Result<SignedAuthorization, PayError> {
    describe(lines, version, requirement, &terms, payer);
    let now = crate::clock::unix_now();
    let timeout = requirement["maxTimeoutSeconds"].as_u64().unwrap_or(60);
    Ok(sign(
        payer,
        &terms,
        now.saturating_sub(600),
        now + timeout,
        random_nonce(),
    )?)
}

fn describe(lines: &mut String, version: &str, requirement: &Value, terms: &Terms, payer: &Payer) {
    let _ = writeln!(
        lines,
        "asked ({version}): {} atomic units of {} on chain {} to {}",
        terms.amount,
        terms.asset.to_checksum(None),
        terms.chain_id,
        terms.pay_to.to_checksum(None)
    );
    let _ = writeln!(
        lines,
        "signing an EIP-3009 authorization as {} ({} {})",
        payer.address().to_checksum(None),
        requirement["extra"]["name"],
        requirement["extra"]["version"]
    );
}

fn preview(body: &str) -> String {
    const LIMIT: usize = 400;
    if body.len() <= LIMIT {
        return body.to_owned();
    }
    let mut end = LIMIT;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &body[..end], body.len())
}
