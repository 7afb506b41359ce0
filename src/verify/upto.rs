//! Inline verification of x402 `upto` payments on EVM: a Permit2 `PermitWitnessTransferFrom`
//! with x402's upto witness, checked in the order the reference facilitator checks it
//! (spender, recipient, facilitator, deadline, validAfter, ceiling, token, signature) and its
//! signer recovered from the EIP-712 digest; and the EIP-2612 permit a payer without a
//! Permit2 allowance may send with it (`eip2612GasSponsoring`). Pure, like the rest of
//! `verify`: whether the permit's nonce is still the token's is read at admission.

use alloy_primitives::{keccak256, Address, B256, U256};
use alloy_sol_types::SolValue;

use super::{
    parse_address, parse_time, parse_uint, typed_digest, Authorized, Policy, Presented, Rejection,
    VerifiedPayment, Version,
};
use crate::nonce::NonceKey;
use crate::pricing::{Requirement, Scheme};
use crate::x402::{
    Eip2612Info, PaymentPayload, Permit2Authorization, EIP2612_GAS_SPONSORING, PERMIT2_ADDRESS,
    UPTO_PROXY_ADDRESS,
};

/// The primary type of an upto authorization, with its referenced types appended.
const PERMIT_WITNESS_TYPE: &str = "PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline,Witness witness)TokenPermissions(address token,uint256 amount)Witness(address to,address facilitator,uint256 validAfter)";

/// The x402 upto witness type.
const WITNESS_TYPE: &str = "Witness(address to,address facilitator,uint256 validAfter)";

/// The type hashes of the primary type, `TokenPermissions` and `Witness`, computed once.
static TYPEHASHES: std::sync::LazyLock<(B256, B256, B256)> = std::sync::LazyLock::new(|| {
    (
        keccak256(PERMIT_WITNESS_TYPE),
        keccak256("TokenPermissions(address token,uint256 amount)"),
        keccak256(WITNESS_TYPE),
    )
});

/// A Permit2 upto authorization with its fields parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UptoAuthorization {
    pub owner: Address,
    pub token: Address,
    /// The ceiling: the most that may be charged.
    pub ceiling: U256,
    pub spender: Address,
    pub nonce: U256,
    pub deadline: u64,
    pub to: Address,
    pub facilitator: Address,
    pub valid_after: u64,
}

impl UptoAuthorization {
    fn parse(auth: &Permit2Authorization) -> Result<Self, Rejection> {
        Ok(Self {
            owner: parse_address(&auth.from)
                .ok_or(Rejection::Malformed("permit2Authorization.from"))?,
            token: parse_address(&auth.permitted.token)
                .ok_or(Rejection::Malformed("permit2Authorization.permitted.token"))?,
            ceiling: parse_uint(&auth.permitted.amount.0).ok_or(Rejection::Malformed(
                "permit2Authorization.permitted.amount",
            ))?,
            spender: parse_address(&auth.spender)
                .ok_or(Rejection::Malformed("permit2Authorization.spender"))?,
            nonce: parse_nonce(&auth.nonce.0)
                .ok_or(Rejection::Malformed("permit2Authorization.nonce"))?,
            deadline: parse_time(&auth.deadline.0)
                .ok_or(Rejection::Malformed("permit2Authorization.deadline"))?,
            to: parse_address(&auth.witness.to)
                .ok_or(Rejection::Malformed("permit2Authorization.witness.to"))?,
            facilitator: parse_address(&auth.witness.facilitator).ok_or(Rejection::Malformed(
                "permit2Authorization.witness.facilitator",
            ))?,
            valid_after: parse_time(&auth.witness.valid_after.0).ok_or(Rejection::Malformed(
                "permit2Authorization.witness.validAfter",
            ))?,
        })
    }

    /// The EIP-712 digest the owner signed under Permit2's domain separator `domain`.
    pub fn digest(&self, domain: &B256) -> B256 {
        let (primary, permissions, witness) = *TYPEHASHES;
        let permitted = keccak256((permissions, self.token, self.ceiling).abi_encode());
        let witness = keccak256(
            (
                witness,
                self.to,
                self.facilitator,
                U256::from(self.valid_after),
            )
                .abi_encode(),
        );
        let message = keccak256(
            (
                primary,
                permitted,
                self.spender,
                self.nonce,
                U256::from(self.deadline),
                witness,
            )
                .abi_encode(),
        );
        typed_digest(domain, &message)
    }
}

/// An EIP-2612 permit of the token to Permit2, checked against its upto payment: the
/// settler runs it (`settleWithPermit`) before the transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Permit2612 {
    /// The allowance it grants Permit2: the payment's ceiling.
    pub value: U256,
    pub deadline: u64,
    /// The token's `nonces(owner)` it was signed at; usable only while the token still
    /// says so.
    #[serde(default)]
    pub nonce: U256,
    pub r: B256,
    pub s: B256,
    pub v: u8,
}

/// The `Permit` type an EIP-2612 token signs approvals under.
const PERMIT_TYPE: &str =
    "Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)";

/// The EIP-712 digest of an EIP-2612 `Permit(owner, Permit2, value, nonce, deadline)`
/// under the token's domain separator.
pub fn permit2612_digest(
    token_domain: &B256,
    owner: Address,
    value: U256,
    nonce: U256,
    deadline: u64,
) -> B256 {
    let message = keccak256(
        (
            keccak256(PERMIT_TYPE),
            owner,
            PERMIT2_ADDRESS,
            value,
            nonce,
            U256::from(deadline),
        )
            .abi_encode(),
    );
    typed_digest(token_domain, &message)
}

/// The parts of a v2 upto payment `verify` checks.
pub(super) struct UptoPayment<'a> {
    pub auth: Option<&'a Permit2Authorization>,
    pub signature: &'a Presented,
    pub permit2612: Option<&'a Eip2612Info>,
}

/// The client's `eip2612GasSponsoring.info`, if it answered the extension with a permit.
pub(super) fn permit2612_info(
    extensions: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<Option<Eip2612Info>, Rejection> {
    let Some(info) = extensions
        .and_then(|e| e.get(EIP2612_GAS_SPONSORING))
        .and_then(|e| e.get("info"))
    else {
        return Ok(None);
    };
    // Clients echo the 402's declaration (a description, no permit) when they sign none.
    if ["from", "signature"]
        .iter()
        .any(|key| info.get(key).is_none())
    {
        return Ok(None);
    }
    serde_json::from_value(info.clone())
        .map(Some)
        .map_err(|_| Rejection::Eip2612Malformed("extensions.eip2612GasSponsoring.info"))
}

/// Checks a payer's EIP-2612 permit against its Permit2 authorization: from the owner, for
/// the token, to Permit2, for the ceiling (`settleWithPermit` requires it), valid until the
/// payment's deadline, signed by the owner under the token's EIP-712 domain.
fn check_permit2612(
    info: &Eip2612Info,
    auth: &UptoAuthorization,
    token_domain: &B256,
    now: u64,
    policy: &Policy,
) -> Result<Permit2612, Rejection> {
    let field = |name: &'static str| Rejection::Eip2612Malformed(name);
    let from = parse_address(&info.from).ok_or(field("info.from"))?;
    let asset = parse_address(&info.asset).ok_or(field("info.asset"))?;
    let spender = parse_address(&info.spender).ok_or(field("info.spender"))?;
    let value = parse_uint(&info.amount.0).ok_or(field("info.amount"))?;
    let nonce = parse_uint(&info.nonce.0).ok_or(field("info.nonce"))?;
    let deadline = parse_time(&info.deadline.0).ok_or(field("info.deadline"))?;
    let signature = info
        .signature
        .strip_prefix("0x")
        .and_then(|hex| alloy_primitives::hex::decode(hex).ok())
        .and_then(|bytes| <[u8; 65]>::try_from(bytes).ok())
        .ok_or(field("info.signature"))?;
    if from != auth.owner {
        return Err(Rejection::Eip2612From);
    }
    if asset != auth.token {
        return Err(Rejection::Eip2612Asset);
    }
    if spender != PERMIT2_ADDRESS {
        return Err(Rejection::Eip2612Spender);
    }
    if value != auth.ceiling {
        return Err(Rejection::Eip2612Amount);
    }
    if deadline < now.saturating_add(policy.valid_before_margin_seconds) {
        return Err(Rejection::Eip2612Deadline);
    }
    let digest = permit2612_digest(token_domain, from, value, nonce, deadline);
    // The token's `permit` takes an ECDSA (v, r, s) with a low s, nothing else.
    let ecdsa = alloy_primitives::Signature::from_raw_array(&signature)
        .map_err(|_| field("info.signature"))?;
    let recovered = (ecdsa.s() <= super::SECP256K1N_HALF)
        .then(|| alloy_consensus::crypto::secp256k1::recover_signer(&ecdsa, digest).ok())
        .flatten();
    if recovered != Some(from) {
        return Err(Rejection::Eip2612Signature);
    }
    let mut v = signature[64];
    if v < 27 {
        v += 27;
    }
    Ok(Permit2612 {
        value,
        deadline,
        nonce,
        r: B256::from_slice(&signature[..32]),
        s: B256::from_slice(&signature[32..64]),
        v,
    })
}

/// Checks an `upto` v2 payload (Permit2, with an optional EIP-2612 permit) against the
/// requirement it accepted (`index` in the route's list).
pub(crate) fn verify_v2(
    payment: &PaymentPayload,
    signature: &Presented,
    requirement: &Requirement,
    index: usize,
    now: u64,
    policy: &Policy,
) -> Result<VerifiedPayment, Rejection> {
    let permit = permit2612_info(payment.extensions.as_ref())?;
    verify(
        UptoPayment {
            auth: payment.payload.permit2_authorization.as_ref(),
            signature,
            permit2612: permit.as_ref(),
        },
        requirement,
        index,
        now,
        policy,
    )
}

/// Checks an upto payment against the requirement it accepted (`index` in the route's list).
fn verify(
    payment: UptoPayment<'_>,
    requirement: &Requirement,
    index: usize,
    now: u64,
    policy: &Policy,
) -> Result<VerifiedPayment, Rejection> {
    let Scheme::Upto {
        facilitator,
        permit2_domain,
    } = requirement.scheme
    else {
        return Err(Rejection::NoMatchingRequirements);
    };
    let auth = UptoAuthorization::parse(
        payment
            .auth
            .ok_or(Rejection::Malformed("payload.permit2Authorization"))?,
    )?;
    if auth.spender != UPTO_PROXY_ADDRESS {
        return Err(Rejection::Permit2Spender);
    }
    if auth.to != requirement.pay_to {
        return Err(Rejection::Permit2Recipient);
    }
    if auth.facilitator != facilitator {
        return Err(Rejection::UptoFacilitator);
    }
    let (soonest, latest) = policy.deadline_bounds(now, requirement.max_timeout_seconds);
    if auth.deadline < soonest {
        return Err(Rejection::Permit2DeadlineTooSoon);
    }
    if auth.deadline > latest {
        return Err(Rejection::Permit2DeadlineTooLate);
    }
    if auth.valid_after > now {
        return Err(Rejection::Permit2NotYetValid);
    }
    if auth.ceiling != requirement.amount {
        return Err(Rejection::Permit2Amount);
    }
    if auth.token != requirement.asset {
        return Err(Rejection::Permit2Token);
    }
    let digest = auth.digest(&permit2_domain);
    let signature = super::recover(payment.signature, auth.owner, digest, policy)
        .map_err(|_| Rejection::Permit2Signature)?;
    let permit2612 = payment
        .permit2612
        .map(|info| check_permit2612(info, &auth, &requirement.domain_separator, now, policy))
        .transpose()?;
    Ok(VerifiedPayment {
        version: Version::V2,
        requirement: index,
        key: NonceKey {
            chain_id: requirement.chain_id,
            // Permit2 nonces are per owner across tokens: keyed under Permit2.
            asset: PERMIT2_ADDRESS,
            from: auth.owner,
            nonce: B256::from(auth.nonce),
        },
        payer: auth.owner,
        to: auth.to,
        amount: auth.ceiling,
        valid_after: auth.valid_after,
        valid_before: auth.deadline,
        signature,
        authorized: Authorized::Upto {
            facilitator: auth.facilitator,
            token: auth.token,
            permit2612,
        },
        retry_id: None,
    })
}

/// A uint256 nonce as the clients send it: decimal (the SDKs) or `0x` hex (the spec's
/// example).
fn parse_nonce(text: &str) -> Option<U256> {
    match text.strip_prefix("0x") {
        Some(hex) if !hex.is_empty() && hex.len() <= 64 => U256::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None => parse_uint(text),
    }
}

#[cfg(test)]
mod tests {
    use alloy_primitives::address;
    use alloy_sol_types::{sol, Eip712Domain, SolStruct};

    use super::*;
    use crate::pricing::permit2_domain_separator;

    sol! {
        struct TokenPermissions { address token; uint256 amount; }
        struct Witness { address to; address facilitator; uint256 validAfter; }
        struct PermitWitnessTransferFrom {
            TokenPermissions permitted;
            address spender;
            uint256 nonce;
            uint256 deadline;
            Witness witness;
        }
    }

    #[test]
    fn the_digest_is_the_eip712_hash_of_the_permit2_witness_transfer() {
        let auth = UptoAuthorization {
            owner: address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266"),
            token: address!("036CbD53842c5426634e7929541eC2318f3dCF7e"),
            ceiling: U256::from(10_000),
            spender: UPTO_PROXY_ADDRESS,
            nonce: U256::from_str_radix("123456789012345678901234567890", 10).unwrap(),
            deadline: 1_800_000_300,
            to: address!("209693Bc6afc0C5328bA36FaF03C514EF312287C"),
            facilitator: Address::repeat_byte(0x42),
            valid_after: 0,
        };
        let typed = PermitWitnessTransferFrom {
            permitted: TokenPermissions {
                token: auth.token,
                amount: auth.ceiling,
            },
            spender: auth.spender,
            nonce: auth.nonce,
            deadline: U256::from(auth.deadline),
            witness: Witness {
                to: auth.to,
                facilitator: auth.facilitator,
                validAfter: U256::ZERO,
            },
        };
        let domain = Eip712Domain::new(
            Some("Permit2".into()),
            None,
            Some(U256::from(84532)),
            Some(PERMIT2_ADDRESS),
            None,
        );
        assert_eq!(
            auth.digest(&permit2_domain_separator(84532)),
            typed.eip712_signing_hash(&domain)
        );
    }

    #[test]
    fn nonces_parse_as_decimal_or_hex() {
        assert_eq!(parse_nonce("255"), Some(U256::from(255)));
        assert_eq!(parse_nonce("0xff"), Some(U256::from(255)));
        assert_eq!(parse_nonce("0x"), None);
        assert_eq!(parse_nonce("ff"), None);
    }
}
