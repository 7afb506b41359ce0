//! Prepaid sessions (`sign-in-with-x`): what a bundle route sells, a payer's bundle and
//! what it admits, and the proof a returning payer presents. levy issues each challenge's
//! nonce statelessly (a keyed hash of the route and the challenge's times, so it can tell
//! its own nonces from invented ones without a lookup), rebuilds the EIP-4361 message the
//! official clients sign byte for byte, and checks it in the official order.

use alloy_primitives::{eip191_hash_message, keccak256, Address, Signature, B256};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clock::{iso8601, parse_iso8601};

/// The extension's key in a challenge's `extensions`, and the request header's name.
pub const SIGN_IN_WITH_X: &str = "sign-in-with-x";

/// How old a proof's `issuedAt` may be, and how long a challenge stays good.
pub const MAX_AGE_MS: u64 = 300_000;

/// What one purchase of a bundle buys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quota {
    /// This many calls after the paying one.
    Calls(u64),
    /// Calls for this many seconds from the payment.
    Seconds(u64),
    /// Calls until this many response-body bytes were served after the paying one (the
    /// call that crosses the line is served whole).
    Bytes(u64),
}

impl Quota {
    /// The quota's unit, as headers and the admin API name it.
    pub fn unit(self) -> &'static str {
        match self {
            Quota::Calls(_) => "calls",
            Quota::Seconds(_) => "seconds",
            Quota::Bytes(_) => "bytes",
        }
    }
}

/// One payer's bundle on one route: every purchase and every use so far. All fields only
/// grow, so two records of a bundle merge by taking the larger of each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub payer: Address,
    pub route: String,
    /// Calls or bytes bought, over all purchases.
    pub bought: u64,
    /// Calls or bytes used.
    pub used: u64,
    /// When a seconds bundle lapses (Unix seconds).
    pub expires_at: u64,
    pub purchases: u64,
}

/// Why a bundle admits no more calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exhausted {
    #[error("the bundle is used up")]
    UsedUp,
    #[error("the bundle has expired")]
    Expired,
    /// A bytes bundle serves one call at a time: what a call costs is known only once it
    /// is served, so a second one at once could overdraw it by a whole response.
    #[error("a call on this bytes bundle is in flight")]
    InUse,
}

impl Bundle {
    /// An empty bundle (nothing bought yet).
    pub fn new(payer: Address, route: &str) -> Self {
        Self {
            payer,
            route: route.to_owned(),
            bought: 0,
            used: 0,
            expires_at: 0,
            purchases: 0,
        }
    }

    /// Adds one purchase of `quota` made at `now` (seconds extend a live bundle).
    pub fn buy(&mut self, quota: Quota, now: u64) {
        self.purchases += 1;
        match quota {
            Quota::Calls(n) | Quota::Bytes(n) => self.bought = self.bought.saturating_add(n),
            Quota::Seconds(n) => self.expires_at = self.expires_at.max(now).saturating_add(n),
        }
    }

    /// Takes back one purchase of `quota` (its payment failed to settle): what it added is
    /// gone, what was used of it stays used.
    pub fn revoke(&mut self, quota: Quota) {
        self.purchases = self.purchases.saturating_sub(1);
        match quota {
            Quota::Calls(n) | Quota::Bytes(n) => self.bought = self.bought.saturating_sub(n),
            Quota::Seconds(n) => self.expires_at = self.expires_at.saturating_sub(n),
        }
    }

    /// Whether one more call may draw on the bundle at `now`, with `in_flight` calls
    /// already admitted and not yet finished.
    pub fn admits(&self, quota: Quota, in_flight: u64, now: u64) -> Result<(), Exhausted> {
        match quota {
            Quota::Calls(_) if self.used.saturating_add(in_flight) < self.bought => Ok(()),
            // Bytes are only known once served: admitted while any are left, one call at a
            // time (the call that crosses the line is served whole, never several at once).
            Quota::Bytes(_) if self.used < self.bought && in_flight == 0 => Ok(()),
            Quota::Bytes(_) if self.used < self.bought => Err(Exhausted::InUse),
            Quota::Seconds(_) if now < self.expires_at => Ok(()),
            Quota::Seconds(_) => Err(Exhausted::Expired),
            Quota::Calls(_) | Quota::Bytes(_) => Err(Exhausted::UsedUp),
        }
    }

    /// Records a finished call that served `bytes` of body.
    pub fn debit(&mut self, quota: Quota, bytes: u64) {
        match quota {
            Quota::Calls(_) => self.used += 1,
            Quota::Bytes(_) => self.used = self.used.saturating_add(bytes),
            Quota::Seconds(_) => {}
        }
    }

    /// What is left at `now`: calls, bytes or seconds.
    pub fn remaining(&self, quota: Quota, now: u64) -> u64 {
        match quota {
            Quota::Calls(_) | Quota::Bytes(_) => self.bought.saturating_sub(self.used),
            Quota::Seconds(_) => self.expires_at.saturating_sub(now),
        }
    }

    /// Folds in another record of the same bundle.
    pub fn merge(&mut self, other: &Bundle) {
        self.bought = self.bought.max(other.bought);
        self.used = self.used.max(other.used);
        self.expires_at = self.expires_at.max(other.expires_at);
        self.purchases = self.purchases.max(other.purchases);
    }
}

/// A `SIGN-IN-WITH-X` header's JSON, as the official clients send it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Proof {
    pub domain: String,
    pub address: String,
    #[serde(default)]
    pub statement: Option<String>,
    pub uri: String,
    pub version: String,
    pub chain_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub nonce: String,
    pub issued_at: String,
    #[serde(default)]
    pub expiration_time: Option<String>,
    #[serde(default)]
    pub not_before: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub resources: Option<Vec<String>>,
    #[serde(default)]
    pub signature_scheme: Option<String>,
    pub signature: String,
}

/// The longest contract-wallet signature a proof may carry, in bytes (an ERC-6492 wrapper
/// included).
const MAX_SIGNATURE_BYTES: usize = 2 * 1024;

/// Who signed a proof, as far as levy can tell without the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofSigner {
    /// An EOA: the signature recovered to the proof's address.
    Eoa(Address),
    /// Not an ECDSA signature of the proof's address: valid only if the chain says so
    /// (EIP-1271 for a deployed contract wallet, ERC-6492 for one not deployed yet) over
    /// `digest`, the EIP-191 hash of the SIWE message.
    Contract {
        address: Address,
        chain_id: u64,
        digest: B256,
        signature: Vec<u8>,
    },
}

impl ProofSigner {
    /// The signer, where no chain can be asked: a contract wallet's proof is refused.
    pub fn eoa(self) -> Result<Address, ProofError> {
        match self {
            ProofSigner::Eoa(address) => Ok(address),
            ProofSigner::Contract { .. } => Err(ProofError::Signature),
        }
    }
}

/// Why a proof was refused; [`ProofError::reason`] is the extension's code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the SIGN-IN-WITH-X header is not base64 JSON of a proof")]
    Malformed,
    #[error("the proof is for another domain")]
    DomainMismatch,
    #[error("the proof's URI is on another origin")]
    UriMismatch,
    #[error("issuedAt is not a date")]
    IssuedAt,
    #[error("issuedAt is more than five minutes ago")]
    TooOld,
    #[error("issuedAt is in the future")]
    InFuture,
    #[error("expirationTime is not a date")]
    ExpirationTime,
    #[error("the proof has expired")]
    Expired,
    #[error("notBefore is not a date")]
    NotBefore,
    #[error("the proof is not valid yet")]
    NotYetValid,
    #[error("the nonce was not issued by levy for this route, or was used already")]
    Nonce,
    #[error("chainId is not eip155:<number>")]
    ChainId,
    #[error("the chain is not one this route offers")]
    UnsupportedChain,
    #[error("the signature is not 65 hex bytes")]
    MalformedSignature,
    #[error("the signature does not recover to the address")]
    Signature,
}

impl ProofError {
    /// The extension's reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            ProofError::Malformed => "invalid_siwx_payload",
            ProofError::DomainMismatch => "invalid_siwx_domain_mismatch",
            ProofError::UriMismatch => "invalid_siwx_uri_mismatch",
            ProofError::IssuedAt => "invalid_siwx_issued_at",
            ProofError::TooOld => "invalid_siwx_issued_at_too_old",
            ProofError::InFuture => "invalid_siwx_issued_at_in_future",
            ProofError::ExpirationTime => "invalid_siwx_expiration_time",
            ProofError::Expired => "invalid_siwx_expired",
            ProofError::NotBefore => "invalid_siwx_not_before",
            ProofError::NotYetValid => "invalid_siwx_not_yet_valid",
            ProofError::Nonce => "invalid_siwx_nonce",
            ProofError::ChainId => "invalid_siwx_chain_id",
            ProofError::UnsupportedChain => "invalid_siwx_unsupported_chain",
            ProofError::MalformedSignature => "invalid_siwx_malformed_signature",
            ProofError::Signature => "invalid_siwx_signature",
        }
    }
}

/// Decodes a `SIGN-IN-WITH-X` header (standard base64 of the proof's JSON).
pub fn decode(header: &[u8]) -> Result<Proof, ProofError> {
    let json = crate::x402::decode_header(header).ok_or(ProofError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| ProofError::Malformed)
}

/// The EIP-4361 message a proof's signature covers, as `@signinwithethereum/siwe` writes
/// it for the official clients (an all-lower- or upper-case address is checksummed first).
pub fn siwe_message(proof: &Proof, address: &Address, chain_id: u64) -> String {
    let mut m = format!(
        "{} wants you to sign in with your Ethereum account:\n{}\n\n",
        proof.domain,
        address.to_checksum(None)
    );
    if let Some(statement) = &proof.statement {
        m.push_str(statement);
        m.push_str("\n\n");
    } else {
        m.push('\n');
    }
    m.push_str(&format!(
        "URI: {}\nVersion: {}\nChain ID: {chain_id}\nNonce: {}\nIssued At: {}",
        proof.uri, proof.version, proof.nonce, proof.issued_at
    ));
    if let Some(t) = &proof.expiration_time {
        m.push_str(&format!("\nExpiration Time: {t}"));
    }
    if let Some(t) = &proof.not_before {
        m.push_str(&format!("\nNot Before: {t}"));
    }
    if let Some(id) = &proof.request_id {
        m.push_str(&format!("\nRequest ID: {id}"));
    }
    if let Some(resources) = &proof.resources {
        m.push_str("\nResources:");
        for r in resources {
            m.push_str(&format!("\n- {r}"));
        }
    }
    m
}

/// Where a proof must point: the route's scope (its name), the public origin of the
/// resource URL, and the chains the route takes payment on.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub scope: &'a str,
    /// The resource URL the challenge named (`scheme://host[:port]/path`).
    pub resource_url: &'a str,
    pub chain_ids: &'a [u64],
}

/// `scheme://authority` of a URL and its authority (lower-cased, default port dropped).
fn origin_of(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest
        .split(['/', '?', '#'])
        .next()
        .filter(|a| !a.is_empty())?;
    let authority = authority.to_ascii_lowercase();
    let authority = match (scheme.as_str(), authority.rsplit_once(':')) {
        ("http", Some((host, "80"))) | ("https", Some((host, "443"))) => host.to_owned(),
        _ => authority,
    };
    Some((format!("{scheme}://{authority}"), authority))
}

/// Issues challenges and checks proofs with levy's session secret.
#[derive(Clone)]
pub struct Issuer {
    secret: B256,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issuer { .. }")
    }
}

impl Issuer {
    pub fn new(secret: B256) -> Self {
        Self { secret }
    }

    /// The nonce of a challenge for `scope` with these times: 32 hex characters.
    pub fn nonce(&self, scope: &str, issued_at: &str, expiration_time: &str) -> String {
        let mut data = Vec::with_capacity(96 + scope.len());
        data.extend_from_slice(self.secret.as_slice());
        for part in [scope, issued_at, expiration_time] {
            data.extend_from_slice(&(part.len() as u64).to_be_bytes());
            data.extend_from_slice(part.as_bytes());
        }
        alloy_primitives::hex::encode(&keccak256(&data)[..16])
    }

    /// The challenge's `extensions["sign-in-with-x"]` for a request of `resource_url` at
    /// `now_ms`: a fresh nonce, `issuedAt` and `expirationTime`, the chains to sign for.
    pub fn declaration(&self, expected: &Expected<'_>, now_ms: u64) -> Value {
        let issued_at = iso8601(now_ms);
        let expiration_time = iso8601(now_ms + MAX_AGE_MS);
        let nonce = self.nonce(expected.scope, &issued_at, &expiration_time);
        let domain = origin_of(expected.resource_url)
            .map(|(_, authority)| authority)
            .unwrap_or_default();
        let chains: Vec<Value> = expected
            .chain_ids
            .iter()
            .map(|id| json!({"chainId": format!("eip155:{id}"), "type": "eip191"}))
            .collect();
        let text = json!({"type": "string"});
        let time = json!({"type": "string", "format": "date-time"});
        json!({
            "info": {
                "domain": domain,
                "uri": expected.resource_url,
                "version": "1",
                "nonce": nonce,
                "issuedAt": issued_at,
                "expirationTime": expiration_time,
                "statement": "Sign in to use what you bought",
            },
            "supportedChains": chains,
            "schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {
                    "domain": text, "address": text, "statement": text,
                    "uri": {"type": "string", "format": "uri"},
                    "version": text, "chainId": text, "type": text, "nonce": text,
                    "issuedAt": time, "expirationTime": time, "notBefore": time,
                    "requestId": text,
                    "resources": {"type": "array", "items": {"type": "string", "format": "uri"}},
                    "signature": text,
                },
                "required": ["domain", "address", "uri", "version", "chainId", "type", "nonce", "issuedAt", "signature"],
            },
        })
    }

    /// Checks a proof at `now_ms` against what levy issued: domain, URI origin, times,
    /// levy's own nonce for this route, the chain, then the signature: an EOA's is recovered
    /// here; any other is handed back for the chain to judge (a contract wallet's). Whether
    /// the nonce was used before is the caller's to decide.
    pub fn check(
        &self,
        proof: &Proof,
        expected: &Expected<'_>,
        now_ms: u64,
    ) -> Result<ProofSigner, ProofError> {
        let (origin, authority) =
            origin_of(expected.resource_url).ok_or(ProofError::DomainMismatch)?;
        if proof.domain.to_ascii_lowercase() != authority {
            return Err(ProofError::DomainMismatch);
        }
        if origin_of(&proof.uri).map(|(o, _)| o) != Some(origin) {
            return Err(ProofError::UriMismatch);
        }
        let issued = parse_iso8601(&proof.issued_at).ok_or(ProofError::IssuedAt)?;
        if issued > now_ms {
            return Err(ProofError::InFuture);
        }
        if now_ms - issued > MAX_AGE_MS {
            return Err(ProofError::TooOld);
        }
        let expiration = proof.expiration_time.as_deref().unwrap_or_default();
        if !expiration.is_empty() {
            let at = parse_iso8601(expiration).ok_or(ProofError::ExpirationTime)?;
            if at < now_ms {
                return Err(ProofError::Expired);
            }
        }
        if let Some(text) = &proof.not_before {
            let at = parse_iso8601(text).ok_or(ProofError::NotBefore)?;
            if now_ms < at {
                return Err(ProofError::NotYetValid);
            }
        }
        let nonce = self.nonce(expected.scope, &proof.issued_at, expiration);
        if proof.nonce != nonce {
            return Err(ProofError::Nonce);
        }
        let chain_id: u64 = proof
            .chain_id
            .strip_prefix("eip155:")
            .and_then(|n| n.parse().ok())
            .ok_or(ProofError::ChainId)?;
        if !expected.chain_ids.contains(&chain_id) || proof.kind != "eip191" {
            return Err(ProofError::UnsupportedChain);
        }
        let address: Address = proof.address.parse().map_err(|_| ProofError::Signature)?;
        let hex = proof
            .signature
            .strip_prefix("0x")
            .unwrap_or(&proof.signature);
        if hex.len() < 130 || hex.len() > 2 * MAX_SIGNATURE_BYTES {
            return Err(ProofError::MalformedSignature);
        }
        let bytes =
            alloy_primitives::hex::decode(hex).map_err(|_| ProofError::MalformedSignature)?;
        let digest = eip191_hash_message(siwe_message(proof, &address, chain_id));
        let recovered = <[u8; 65]>::try_from(bytes.as_slice())
            .ok()
            .and_then(|raw| Signature::from_raw_array(&raw).ok())
            .and_then(|signature| {
                alloy_consensus::crypto::secp256k1::recover_signer(&signature, digest).ok()
            });
        if recovered == Some(address) {
            return Ok(ProofSigner::Eoa(address));
        }
        Ok(ProofSigner::Contract {
            address,
            chain_id,
            digest,
            signature: bytes,
        })
    }
}

#[cfg(test)]
mod tests;
