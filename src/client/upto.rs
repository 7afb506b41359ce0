//! The paying side of x402 `upto` on EVM: sign a Permit2 witness transfer for a ceiling
//! (and, for a payer without a Permit2 allowance, an EIP-2612 permit to Permit2) and build
//! the `PAYMENT-SIGNATURE` header. Used by the load tool, benches and tests. Pure.

use alloy_primitives::{Address, B256, U256};
use serde_json::{json, Value};

use super::{ClientError, Payer, Terms};
use crate::pricing::permit2_domain_separator;
use crate::verify::upto::{permit2612_digest, UptoAuthorization};
use crate::x402::{encode_header, EIP2612_GAS_SPONSORING, PERMIT2_ADDRESS, UPTO_PROXY_ADDRESS};

/// A signed Permit2 upto authorization, with the permit it may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedUpto {
    pub authorization: UptoAuthorization,
    pub signature: [u8; 65],
    /// `eip2612GasSponsoring.info`, when a permit was signed with it.
    pub permit2612: Option<Value>,
}

/// The `extra.facilitatorAddress` of an upto requirement: the only address that may settle.
pub fn facilitator(requirement: &Value) -> Result<Address, ClientError> {
    requirement
        .pointer("/extra/facilitatorAddress")
        .and_then(Value::as_str)
        .and_then(|a| a.parse().ok())
        .ok_or(ClientError::BadRequirement("facilitatorAddress"))
}

/// Signs a Permit2 witness transfer of up to `terms.amount` to `terms.pay_to`, settleable by
/// `facilitator` only, until `deadline`, under the Permit2 nonce `nonce`.
pub fn sign_upto(
    payer: &Payer,
    terms: &Terms,
    facilitator: Address,
    deadline: u64,
    nonce: U256,
) -> Result<SignedUpto, ClientError> {
    let authorization = UptoAuthorization {
        owner: payer.address,
        token: terms.asset,
        ceiling: terms.amount,
        spender: UPTO_PROXY_ADDRESS,
        nonce,
        deadline,
        to: terms.pay_to,
        facilitator,
        valid_after: 0,
    };
    let digest = authorization.digest(&permit2_domain_separator(terms.chain_id));
    Ok(SignedUpto {
        authorization,
        signature: payer.sign_digest(digest)?,
        permit2612: None,
    })
}

impl SignedUpto {
    /// Adds an EIP-2612 permit approving Permit2 for the ceiling, signed at the token's
    /// `permit_nonce` and valid until the authorization's deadline.
    pub fn with_permit(
        mut self,
        payer: &Payer,
        terms: &Terms,
        permit_nonce: U256,
    ) -> Result<Self, ClientError> {
        let auth = &self.authorization;
        let domain = terms.domain_separator();
        let digest = permit2612_digest(
            &domain,
            auth.owner,
            auth.ceiling,
            permit_nonce,
            auth.deadline,
        );
        let signature = payer.sign_digest(digest)?;
        self.permit2612 = Some(json!({
            "from": auth.owner.to_checksum(None),
            "asset": auth.token.to_checksum(None),
            "spender": PERMIT2_ADDRESS.to_checksum(None),
            "amount": auth.ceiling.to_string(),
            "nonce": permit_nonce.to_string(),
            "deadline": auth.deadline.to_string(),
            "signature": format!("0x{}", alloy_primitives::hex::encode(signature)),
            "version": "1",
        }));
        Ok(self)
    }

    /// The `payload` object of an `upto` EVM payment.
    pub fn payload_json(&self) -> Value {
        let a = &self.authorization;
        json!({
            "signature": format!("0x{}", alloy_primitives::hex::encode(self.signature)),
            "permit2Authorization": {
                "from": a.owner.to_checksum(None),
                "permitted": {"token": a.token.to_checksum(None), "amount": a.ceiling.to_string()},
                "spender": a.spender.to_checksum(None),
                "nonce": a.nonce.to_string(),
                "deadline": a.deadline.to_string(),
                "witness": {
                    "to": a.to.to_checksum(None),
                    "facilitator": a.facilitator.to_checksum(None),
                    "validAfter": a.valid_after.to_string(),
                },
            },
        })
    }

    /// The `PAYMENT-SIGNATURE` value: a v2 payload echoing `accepted`, with the permit as
    /// the `eip2612GasSponsoring` answer when there is one.
    pub fn v2_header(&self, accepted: &Value) -> String {
        let mut payload =
            json!({"x402Version": 2, "accepted": accepted, "payload": self.payload_json()});
        if let (Some(info), Some(map)) = (&self.permit2612, payload.as_object_mut()) {
            map.insert(
                "extensions".into(),
                json!({ EIP2612_GAS_SPONSORING: {"info": info} }),
            );
        }
        encode_header(payload.to_string().as_bytes())
    }
}

/// A random Permit2 nonce (unordered: any unused 256-bit value).
pub fn random_permit2_nonce() -> U256 {
    U256::from_be_bytes(B256::random().0)
}
