//! Inline verification of x402 payments on EVM: decode the header, match the payload to one
//! of the route's issued requirements, check the authorization (`exact`: EIP-3009, here;
//! `upto`: Permit2, in `upto`) and recover its signer. Pure: no I/O, no clock (callers pass `now`), no nonce state. A
//! signature that is not an ECDSA signature of `from` (a contract wallet's, EIP-1271 or
//! ERC-6492) is either refused or, when the caller can ask a chain
//! ([`Policy::contract_signatures`]), handed back as [`PayerSignature::Contract`] for it to
//! check.

use std::str::FromStr;

use alloy_primitives::{b256, keccak256, Address, Signature, B256, U256};

use crate::nonce::NonceKey;
use crate::pricing::{Requirement, Scheme};
use crate::x402::{
    decode_header, AcceptedRequirements, Authorization, PaymentPayload, PaymentRequirementsV2,
    SCHEME_EXACT,
};

pub(crate) mod upto;

/// Payment headers larger than this are refused before decoding.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// The longest contract-wallet signature accepted (ERC-6492 wrappers carry factory calldata).
const MAX_SIGNATURE_BYTES: usize = 2 * 1024;

/// Half the secp256k1 group order: signatures with a larger `s` are malleable (EIP-2).
const SECP256K1N_HALF: U256 = U256::from_be_slice(&[
    0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0x5D, 0x57, 0x6E, 0x73, 0x57, 0xA4, 0x50, 0x1D, 0xDF, 0xE9, 0x2F, 0x46, 0x68, 0x1B, 0x20, 0xA0,
]);

/// `keccak256("TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)")`.
pub const TRANSFER_WITH_AUTHORIZATION_TYPEHASH: B256 =
    b256!("7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267");

/// The EIP-712 digest of an EIP-3009 `TransferWithAuthorization` under a token's domain
/// separator: `keccak256(0x1901 ‖ domain ‖ hashStruct(message))`. Written out by hand
/// because the generic encoder rebuilds the type string on every call.
pub fn transfer_digest(
    domain_separator: &B256,
    from: Address,
    to: Address,
    value: U256,
    valid_after: u64,
    valid_before: u64,
    nonce: B256,
) -> B256 {
    let mut data = [0u8; 32 * 7];
    data[..32].copy_from_slice(TRANSFER_WITH_AUTHORIZATION_TYPEHASH.as_slice());
    data[44..64].copy_from_slice(from.as_slice());
    data[76..96].copy_from_slice(to.as_slice());
    data[96..128].copy_from_slice(&value.to_be_bytes::<32>());
    data[152..160].copy_from_slice(&valid_after.to_be_bytes());
    data[184..192].copy_from_slice(&valid_before.to_be_bytes());
    data[192..].copy_from_slice(nonce.as_slice());
    typed_digest(domain_separator, &keccak256(data))
}

/// `keccak256(0x1901 ‖ domain ‖ message)`: the EIP-712 digest of a struct hash `message`
/// under the domain separator `domain`.
pub fn typed_digest(domain: &B256, message: &B256) -> B256 {
    let mut bytes = [0u8; 66];
    bytes[0] = 0x19;
    bytes[1] = 0x01;
    bytes[2..34].copy_from_slice(domain.as_slice());
    bytes[34..].copy_from_slice(message.as_slice());
    keccak256(bytes)
}

/// Which x402 generation a payment speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Time rules for authorizations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `validBefore` must be at least this far in the future, so the payment can still be
    /// settled after the response (the settlement window).
    pub valid_before_margin_seconds: u64,
    /// How far a client's clock may run ahead of levy's: `validBefore` may exceed
    /// `now + maxTimeoutSeconds` by at most this much (longer authorizations would keep
    /// entries in the nonce set for no client's benefit).
    pub clock_skew_seconds: u64,
    /// Whether signatures that are not ECDSA signatures of `from` are handed back for a
    /// chain to check (contract wallets) instead of refused.
    pub contract_signatures: bool,
}

impl Policy {
    /// The earliest and latest deadline (`validBefore`, a Permit2 `deadline`) an
    /// authorization may carry at `now` for a requirement of `max_timeout_seconds`: late
    /// enough to be settled after the response, no later than the timeout (plus clock skew)
    /// allows.
    pub fn deadline_bounds(&self, now: u64, max_timeout_seconds: u64) -> (u64, u64) {
        (
            now.saturating_add(self.valid_before_margin_seconds),
            now.saturating_add(max_timeout_seconds)
                .saturating_add(self.clock_skew_seconds),
        )
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            valid_before_margin_seconds: 30,
            clock_skew_seconds: 600,
            contract_signatures: false,
        }
    }
}

/// How a verified payment's signature was, or is to be, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayerSignature {
    /// Recovered inline to `from`: `r ‖ s ‖ v`.
    Ecdsa([u8; 65]),
    /// Not an ECDSA signature of `from`: valid only if the chain says so (EIP-1271 for a
    /// deployed contract wallet, ERC-6492 for one not deployed yet). `digest` is the EIP-712
    /// hash it must sign.
    Contract { bytes: Vec<u8>, digest: B256 },
}

impl PayerSignature {
    /// The signature as presented (for the journal and the transfer call).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            PayerSignature::Ecdsa(raw) => raw,
            PayerSignature::Contract { bytes, .. } => bytes,
        }
    }
}

/// A signature as the payload carries it: 65 bytes `r ‖ s ‖ v`, or longer (a contract
/// wallet's).
pub enum Presented {
    Ecdsa(Signature),
    Long(Vec<u8>),
}

/// A payment that passed every local check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPayment {
    pub version: Version,
    /// Index of the matched requirement in the route's list.
    pub requirement: usize,
    pub key: NonceKey,
    pub payer: Address,
    pub to: Address,
    pub amount: U256,
    pub valid_after: u64,
    pub valid_before: u64,
    pub signature: PayerSignature,
    /// What the signature authorizes, by scheme.
    pub authorized: Authorized,
    /// The client's `payment-identifier` id, when it sent a valid one.
    pub retry_id: Option<String>,
}

/// What a verified payment authorizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorized {
    /// A transfer of exactly `amount` (EIP-3009).
    Exact,
    /// Up to `amount` of `token` through Permit2 and the upto proxy, settled by
    /// `facilitator`; `key.nonce` is the Permit2 nonce and `valid_before` its deadline.
    Upto {
        facilitator: Address,
        token: Address,
        /// The payer's EIP-2612 permit approving Permit2 (`eip2612GasSponsoring`), checked.
        permit2612: Option<upto::Permit2612>,
    },
}

impl VerifiedPayment {
    /// The token it pays in.
    pub fn token(&self) -> Address {
        match self.authorized {
            Authorized::Exact => self.key.asset,
            Authorized::Upto { token, .. } => token,
        }
    }
}

/// Why a payment was refused. [`Rejection::reason`] is the x402 reason string clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the payment header is larger than 8 KiB")]
    TooLarge,
    #[error("the payment header is not base64")]
    NotBase64,
    #[error("the payment is not the expected JSON: {0}")]
    BadJson(String),
    #[error("`{0}` is malformed")]
    Malformed(&'static str),
    #[error("x402Version {0} is not supported")]
    UnsupportedVersion(u64),
    #[error("scheme `{0}` is not offered here")]
    UnsupportedScheme(String),
    #[error("network `{0}` is not offered here")]
    UnofferedNetwork(String),
    #[error("the accepted requirements match none of those offered")]
    NoMatchingRequirements,
    #[error("authorization.to is not the payTo address")]
    RecipientMismatch,
    #[error("authorization.value is not the price")]
    ValueMismatch,
    #[error("the authorization is not valid yet (validAfter is in the future)")]
    NotYetValid,
    #[error("the authorization expires before it can be settled")]
    ExpiresTooSoon,
    #[error("the authorization is valid for longer than maxTimeoutSeconds allows")]
    ExpiresTooLate,
    #[error("the signature does not recover to authorization.from")]
    BadSignature,
    #[error("the signature is malleable (high s)")]
    HighS,
    #[error("smart-wallet (EIP-1271) signatures are not accepted here")]
    SmartWalletSignature,
    #[error("this payment is being used by another request right now")]
    InFlight,
    #[error("this payment identifier was used by another payer or for another request")]
    IdentifierReused,
    #[error("this payment was already used")]
    AlreadyUsed,
    #[error("permit2Authorization.spender is not the upto proxy")]
    Permit2Spender,
    #[error("witness.to is not the payTo address")]
    Permit2Recipient,
    #[error("witness.facilitator is not the facilitatorAddress offered")]
    UptoFacilitator,
    #[error("the Permit2 deadline is too soon to deliver and settle before it")]
    Permit2DeadlineTooSoon,
    #[error("the Permit2 deadline is later than maxTimeoutSeconds allows")]
    Permit2DeadlineTooLate,
    #[error("witness.validAfter is in the future")]
    Permit2NotYetValid,
    #[error("permitted.amount is not the ceiling offered")]
    Permit2Amount,
    #[error("permitted.token is not the asset offered")]
    Permit2Token,
    #[error("the Permit2 signature does not recover to permit2Authorization.from")]
    Permit2Signature,
    #[error("this Permit2 nonce was already used")]
    Permit2NonceUsed,
    #[error("the eip2612GasSponsoring answer is malformed: `{0}`")]
    Eip2612Malformed(&'static str),
    #[error("the EIP-2612 permit is not from the Permit2 owner")]
    Eip2612From,
    #[error("the EIP-2612 permit is not for the asset offered")]
    Eip2612Asset,
    #[error("the EIP-2612 permit's spender is not Permit2")]
    Eip2612Spender,
    #[error("the EIP-2612 permit's value is not the ceiling")]
    Eip2612Amount,
    #[error("the EIP-2612 permit expires before the payment can be settled")]
    Eip2612Deadline,
    #[error("the EIP-2612 permit's signature does not recover to its owner")]
    Eip2612Signature,
}

impl Rejection {
    /// The reason string put in the challenge's `error` (x402 spec names where one exists).
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::TooLarge
            | Rejection::NotBase64
            | Rejection::BadJson(_)
            | Rejection::Malformed(_) => "invalid_payload",
            Rejection::UnsupportedVersion(_) => "invalid_x402_version",
            Rejection::UnsupportedScheme(_) => "unsupported_scheme",
            Rejection::UnofferedNetwork(_) => "invalid_network",
            Rejection::NoMatchingRequirements => "invalid_payment_requirements",
            Rejection::RecipientMismatch => "invalid_exact_evm_recipient_mismatch",
            Rejection::ValueMismatch => "invalid_exact_evm_authorization_value",
            Rejection::NotYetValid => "invalid_exact_evm_payload_authorization_valid_after",
            Rejection::ExpiresTooSoon | Rejection::ExpiresTooLate => {
                "invalid_exact_evm_payload_authorization_valid_before"
            }
            Rejection::BadSignature | Rejection::HighS | Rejection::SmartWalletSignature => {
                "invalid_exact_evm_signature"
            }
            Rejection::InFlight => "payment_in_flight",
            Rejection::IdentifierReused => "payment_identifier_conflict",
            Rejection::AlreadyUsed => "invalid_exact_evm_nonce_already_used",
            Rejection::Permit2Spender => "invalid_permit2_spender",
            Rejection::Permit2Recipient => "invalid_permit2_recipient_mismatch",
            Rejection::UptoFacilitator => "upto_facilitator_mismatch",
            Rejection::Permit2DeadlineTooSoon | Rejection::Permit2DeadlineTooLate => {
                "permit2_deadline_expired"
            }
            Rejection::Permit2NotYetValid => "permit2_not_yet_valid",
            Rejection::Permit2Amount => "permit2_amount_mismatch",
            Rejection::Permit2Token => "permit2_token_mismatch",
            Rejection::Permit2Signature => "invalid_permit2_signature",
            Rejection::Permit2NonceUsed => "permit2_invalid_nonce",
            Rejection::Eip2612Malformed(_) => "invalid_eip2612_extension_format",
            Rejection::Eip2612From => "eip2612_from_mismatch",
            Rejection::Eip2612Asset => "eip2612_asset_mismatch",
            Rejection::Eip2612Spender => "eip2612_spender_not_permit2",
            Rejection::Eip2612Amount => "permit2_2612_amount_mismatch",
            Rejection::Eip2612Deadline => "eip2612_deadline_expired",
            Rejection::Eip2612Signature => "invalid_eip2612_signature",
        }
    }
}

/// Decodes a payment header value: at most [`MAX_HEADER_BYTES`], lenient base64, JSON.
pub fn decode(header: &[u8]) -> Result<PaymentPayload, Rejection> {
    if header.len() > MAX_HEADER_BYTES {
        return Err(Rejection::TooLarge);
    }
    let json = decode_header(header).ok_or(Rejection::NotBase64)?;
    serde_json::from_slice(&json).map_err(|e| Rejection::BadJson(e.to_string()))
}

/// Checks an `exact` v1 payload (EIP-3009) against a route's requirements: the first one
/// on its network whose asset the signature was made for.
pub(crate) fn verify_exact_v1(
    payment: &PaymentPayload,
    signature: &Presented,
    requirements: &[Requirement],
    now: u64,
    policy: &Policy,
) -> Result<VerifiedPayment, Rejection> {
    let scheme = payment
        .scheme
        .as_deref()
        .ok_or(Rejection::Malformed("scheme"))?;
    if scheme != SCHEME_EXACT {
        return Err(Rejection::UnsupportedScheme(scheme.to_owned()));
    }
    let network = payment
        .network
        .as_deref()
        .ok_or(Rejection::Malformed("network"))?;
    let auth = ParsedAuthorization::parse(exact_authorization(payment)?)?;
    let mut first_error = None;
    for (index, requirement) in requirements.iter().enumerate() {
        if requirement.v1_network.as_deref() != Some(network) || requirement.scheme != Scheme::Exact
        {
            continue;
        }
        // Several assets on one network: the signature tells which one was signed for.
        match check(&auth, signature, requirement, now, policy) {
            Ok(checked) => return Ok(auth.into_verified(Version::V1, index, requirement, checked)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| Rejection::UnofferedNetwork(network.to_owned())))
}

/// Checks an `exact` v2 payload (EIP-3009) against the requirement it accepted.
pub(crate) fn verify_exact_v2(
    payment: &PaymentPayload,
    signature: &Presented,
    requirement: &Requirement,
    index: usize,
    now: u64,
    policy: &Policy,
) -> Result<VerifiedPayment, Rejection> {
    let auth = ParsedAuthorization::parse(exact_authorization(payment)?)?;
    let checked = check(&auth, signature, requirement, now, policy)?;
    Ok(auth.into_verified(Version::V2, index, requirement, checked))
}

/// The index of the issued requirement `accepted` echoes: core fields equal (addresses
/// without regard to case) and every issued `extra` key present with the same value.
pub(crate) fn match_v2(
    accepted: &AcceptedRequirements,
    issued: &[PaymentRequirementsV2],
) -> Result<usize, Rejection> {
    let position = issued.iter().position(|r| {
        r.scheme == accepted.scheme
            && r.network == accepted.network
            && r.amount == accepted.amount
            && r.asset.eq_ignore_ascii_case(&accepted.asset)
            && r.pay_to.eq_ignore_ascii_case(&accepted.pay_to)
            && accepted.max_timeout_seconds.as_u64() == Some(r.max_timeout_seconds)
            && r.extra
                .iter()
                .all(|(k, v)| accepted.extra.as_ref().and_then(|e| e.get(k)) == Some(v))
    });
    match position {
        Some(index) => Ok(index),
        None if !issued.iter().any(|r| r.scheme == accepted.scheme) => {
            Err(Rejection::UnsupportedScheme(accepted.scheme.clone()))
        }
        None if !issued.iter().any(|r| r.network == accepted.network) => {
            Err(Rejection::UnofferedNetwork(accepted.network.clone()))
        }
        None => Err(Rejection::NoMatchingRequirements),
    }
}

/// The EIP-3009 authorization of an `exact` payload.
fn exact_authorization(payment: &PaymentPayload) -> Result<&Authorization, Rejection> {
    payment
        .payload
        .authorization
        .as_ref()
        .ok_or(Rejection::Malformed("payload.authorization"))
}

/// The authorization with its fields parsed.
struct ParsedAuthorization {
    from: Address,
    to: Address,
    value: U256,
    valid_after: u64,
    valid_before: u64,
    nonce: B256,
}

impl ParsedAuthorization {
    fn parse(auth: &Authorization) -> Result<Self, Rejection> {
        Ok(Self {
            from: parse_address(&auth.from).ok_or(Rejection::Malformed("authorization.from"))?,
            to: parse_address(&auth.to).ok_or(Rejection::Malformed("authorization.to"))?,
            value: parse_uint(&auth.value.0).ok_or(Rejection::Malformed("authorization.value"))?,
            valid_after: parse_time(&auth.valid_after.0)
                .ok_or(Rejection::Malformed("authorization.validAfter"))?,
            valid_before: parse_time(&auth.valid_before.0)
                .ok_or(Rejection::Malformed("authorization.validBefore"))?,
            nonce: parse_nonce(&auth.nonce).ok_or(Rejection::Malformed("authorization.nonce"))?,
        })
    }

    /// The EIP-712 digest the payer signed under `domain_separator`.
    fn digest(&self, domain_separator: &B256) -> B256 {
        transfer_digest(
            domain_separator,
            self.from,
            self.to,
            self.value,
            self.valid_after,
            self.valid_before,
            self.nonce,
        )
    }

    fn into_verified(
        self,
        version: Version,
        index: usize,
        r: &Requirement,
        signature: PayerSignature,
    ) -> VerifiedPayment {
        VerifiedPayment {
            version,
            requirement: index,
            key: NonceKey {
                chain_id: r.chain_id,
                // EIP-3009 nonces live in the token.
                asset: r.asset,
                from: self.from,
                nonce: self.nonce,
            },
            payer: self.from,
            to: self.to,
            amount: self.value,
            valid_after: self.valid_after,
            valid_before: self.valid_before,
            signature,
            authorized: Authorized::Exact,
            retry_id: None,
        }
    }
}

/// Every check of one authorization against one requirement, cheapest first; the signature's
/// outcome when all pass.
fn check(
    auth: &ParsedAuthorization,
    presented: &Presented,
    requirement: &Requirement,
    now: u64,
    policy: &Policy,
) -> Result<PayerSignature, Rejection> {
    if auth.to != requirement.pay_to {
        return Err(Rejection::RecipientMismatch);
    }
    if auth.value != requirement.amount {
        return Err(Rejection::ValueMismatch);
    }
    if auth.valid_after > now {
        return Err(Rejection::NotYetValid);
    }
    let (soonest, latest) = policy.deadline_bounds(now, requirement.max_timeout_seconds);
    if auth.valid_before < soonest {
        return Err(Rejection::ExpiresTooSoon);
    }
    if auth.valid_before > latest {
        return Err(Rejection::ExpiresTooLate);
    }
    recover(
        presented,
        auth.from,
        auth.digest(&requirement.domain_separator),
        policy,
    )
}

/// Whether `presented` is `from`'s ECDSA signature of `digest`. Anything else may still be a
/// contract wallet's: handed back for the chain to judge when it can be asked, refused
/// otherwise.
fn recover(
    presented: &Presented,
    from: Address,
    digest: B256,
    policy: &Policy,
) -> Result<PayerSignature, Rejection> {
    let for_chain = |bytes: Vec<u8>, refusal: Rejection| {
        if policy.contract_signatures {
            Ok(PayerSignature::Contract { bytes, digest })
        } else {
            Err(refusal)
        }
    };
    let signature = match presented {
        Presented::Long(bytes) => return for_chain(bytes.clone(), Rejection::SmartWalletSignature),
        Presented::Ecdsa(signature) => signature,
    };
    // The token refuses a high-s ECDSA signature whoever signs: refused here, for every
    // payer, before anything asks the chain.
    if signature.s() > SECP256K1N_HALF {
        return Err(Rejection::HighS);
    }
    match alloy_consensus::crypto::secp256k1::recover_signer(signature, digest) {
        Ok(signer) if signer == from => Ok(PayerSignature::Ecdsa(signature.as_bytes())),
        _ => for_chain(signature.as_bytes().to_vec(), Rejection::BadSignature),
    }
}

pub(crate) fn parse_signature(text: &str) -> Result<Presented, Rejection> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    let malformed = Rejection::Malformed("payload.signature");
    if hex.len() == 130 {
        let mut raw = [0u8; 65];
        alloy_primitives::hex::decode_to_slice(hex, &mut raw).map_err(|_| malformed.clone())?;
        return Signature::from_raw_array(&raw)
            .map(Presented::Ecdsa)
            .map_err(|_| malformed);
    }
    if hex.len() > 130 && hex.len() <= 2 * MAX_SIGNATURE_BYTES {
        return alloy_primitives::hex::decode(hex)
            .map(Presented::Long)
            .map_err(|_| malformed);
    }
    Err(malformed)
}

/// A `0x`-prefixed 20-byte hex address.
pub(crate) fn parse_address(text: &str) -> Option<Address> {
    let hex = text.strip_prefix("0x")?;
    (hex.len() == 40)
        .then(|| Address::from_str(text).ok())
        .flatten()
}

/// A `0x`-prefixed 32-byte hex word.
pub(crate) fn parse_nonce(text: &str) -> Option<B256> {
    let hex = text.strip_prefix("0x")?;
    (hex.len() == 64)
        .then(|| B256::from_str(text).ok())
        .flatten()
}

fn parse_uint(text: &str) -> Option<U256> {
    (!text.is_empty() && text.len() <= 78 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| U256::from_str_radix(text, 10).ok())
        .flatten()
}

/// Unix seconds; values beyond `u64` saturate (they are far past any expiry rule).
pub(crate) fn parse_time(text: &str) -> Option<u64> {
    parse_uint(text).map(|v| u64::try_from(v).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
