//! Inline verification of x402 `upto` payments on EVM: a Permit2 `PermitWitnessTransferFrom`
//! with x402's upto witness, checked in the order the reference facilitator checks it
//! (spender, recipient, facilitator, deadline, validAfter, ceiling, token, signature) and its
//! signer recovered from the EIP-712 digest. Pure, like the rest of `verify`.

use alloy_primitives::{keccak256, Address, B256, U256};
use alloy_sol_types::SolValue;

use super::{
    parse_address, parse_time, parse_uint, Authorized, Policy, Presented, Rejection,
    VerifiedPayment, Version,
};
use crate::nonce::NonceKey;
use crate::pricing::{Requirement, Scheme};
use crate::x402::{Permit2Authorization, PERMIT2_ADDRESS, UPTO_PROXY_ADDRESS};

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
        let mut bytes = [0u8; 66];
        bytes[0] = 0x19;
        bytes[1] = 0x01;
        bytes[2..34].copy_from_slice(domain.as_slice());
        bytes[34..].copy_from_slice(message.as_slice());
        keccak256(bytes)
    }
}

/// Checks an upto payment against the requirement it accepted (`index` in the route's list).
pub(super) fn verify(
    auth: Option<&Permit2Authorization>,
    presented: &Presented,
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
        auth.ok_or(Rejection::Malformed("payload.permit2Authorization"))?,
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
    if auth.deadline < now.saturating_add(policy.valid_before_margin_seconds) {
        return Err(Rejection::Permit2DeadlineTooSoon);
    }
    let latest = now
        .saturating_add(requirement.max_timeout_seconds)
        .saturating_add(policy.clock_skew_seconds);
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
    let signature = super::recover(presented, auth.owner, digest, policy)
        .map_err(|_| Rejection::Permit2Signature)?;
    Ok(VerifiedPayment {
        version: Version::V2,
        requirement: index,
        key: NonceKey {
            chain_id: requirement.chain_id,
            // Permit2 nonces are per owner across tokens: keyed under Permit2, apart from
            // the token's EIP-3009 nonces.
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
        },
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
