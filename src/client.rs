//! The paying side of x402 `exact` on EVM (`upto` in `client/upto.rs`, `batch-settlement` in
//! `client/channel.rs`): sign an EIP-3009 authorization and build the
//! `PAYMENT-SIGNATURE` (v2) or `X-PAYMENT` (v1) header. An implementation independent of
//! the verifier's parsing, used by `levy pay`, the load tool, benches and tests. Pure.

use std::str::FromStr;

use alloy_primitives::{Address, B256, U256};
use serde_json::{json, Value};

use crate::pricing::domain_separator;
use crate::verify::transfer_digest;
use crate::x402::encode_header;

pub mod channel;
pub mod upto;

/// Why a payment cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("the private key is not 32 bytes of hex")]
    BadKey,
    #[error("the requirement lacks or has a malformed `{0}`")]
    BadRequirement(&'static str),
    #[error("signing failed")]
    Signing,
}

/// A payer's key.
#[derive(Clone)]
pub struct Payer {
    secret: B256,
    address: Address,
}

impl std::fmt::Debug for Payer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Payer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Payer {
    /// From a hex private key (`0x` optional).
    pub fn from_hex(key: &str) -> Result<Self, ClientError> {
        let secret = B256::from_str(key.trim()).map_err(|_| ClientError::BadKey)?;
        let secret_key =
            secp256k1::SecretKey::from_slice(secret.as_slice()).map_err(|_| ClientError::BadKey)?;
        let public = secp256k1::PublicKey::from_secret_key(secp256k1::SECP256K1, &secret_key);
        let address = alloy_consensus::crypto::secp256k1::public_key_to_address(public);
        Ok(Self { secret, address })
    }

    pub fn address(&self) -> Address {
        self.address
    }

    /// Signs a 32-byte digest: 65 bytes `r ‖ s ‖ v` with `v` 27 or 28.
    pub fn sign_digest(&self, digest: B256) -> Result<[u8; 65], ClientError> {
        alloy_consensus::crypto::secp256k1::sign_message(self.secret, digest)
            .map(|signature| signature.as_bytes())
            .map_err(|_| ClientError::Signing)
    }
}

/// What a payment must satisfy: one requirement's chain, token and price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub chain_id: u64,
    pub asset: Address,
    pub eip712_name: String,
    pub eip712_version: String,
    pub pay_to: Address,
    pub amount: U256,
}

impl Terms {
    /// The EIP-712 domain separator of the token these terms pay in.
    pub fn domain_separator(&self) -> B256 {
        domain_separator(
            &self.eip712_name,
            &self.eip712_version,
            self.chain_id,
            self.asset,
        )
    }

    /// Reads a v2 `PaymentRequirements` JSON object (network `eip155:<id>`).
    pub fn from_v2(requirement: &Value) -> Result<Self, ClientError> {
        let network = str_field(requirement, "network")?;
        let chain_id = network
            .strip_prefix("eip155:")
            .and_then(|id| id.parse().ok())
            .ok_or(ClientError::BadRequirement("network"))?;
        Self::with_chain(requirement, chain_id, "amount")
    }

    /// Reads a v1 `PaymentRequirements` JSON object, given the chain id of its network name.
    pub fn from_v1(requirement: &Value, chain_id: u64) -> Result<Self, ClientError> {
        Self::with_chain(requirement, chain_id, "maxAmountRequired")
    }

    fn with_chain(
        requirement: &Value,
        chain_id: u64,
        amount_key: &'static str,
    ) -> Result<Self, ClientError> {
        let address = |key: &'static str| {
            Address::from_str(str_field(requirement, key)?)
                .map_err(|_| ClientError::BadRequirement(key))
        };
        let extra = requirement
            .get("extra")
            .ok_or(ClientError::BadRequirement("extra"))?;
        Ok(Self {
            chain_id,
            asset: address("asset")?,
            pay_to: address("payTo")?,
            amount: U256::from_str_radix(str_field(requirement, amount_key)?, 10)
                .map_err(|_| ClientError::BadRequirement(amount_key))?,
            eip712_name: str_field(extra, "name")?.to_owned(),
            eip712_version: str_field(extra, "version")?.to_owned(),
        })
    }
}

fn str_field<'a>(value: &'a Value, key: &'static str) -> Result<&'a str, ClientError> {
    value
        .get(key)
        .and_then(Value::as_str)
        .ok_or(ClientError::BadRequirement(key))
}

/// A signed EIP-3009 authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAuthorization {
    pub from: Address,
    pub to: Address,
    pub value: U256,
    pub valid_after: u64,
    pub valid_before: u64,
    pub nonce: B256,
    pub signature: [u8; 65],
}

impl SignedAuthorization {
    /// The `payload` object of an `exact` EVM payment.
    pub fn payload_json(&self) -> Value {
        json!({
            "signature": format!("0x{}", alloy_primitives::hex::encode(self.signature)),
            "authorization": {
                "from": self.from.to_checksum(None),
                "to": self.to.to_checksum(None),
                "value": self.value.to_string(),
                "validAfter": self.valid_after.to_string(),
                "validBefore": self.valid_before.to_string(),
                "nonce": self.nonce.to_string(),
            }
        })
    }

    /// The `PAYMENT-SIGNATURE` value: a v2 payload echoing `accepted` (and `resource`).
    pub fn v2_header(&self, accepted: &Value, resource: Option<&Value>) -> String {
        let mut payload =
            json!({"x402Version": 2, "accepted": accepted, "payload": self.payload_json()});
        if let (Some(resource), Some(map)) = (resource, payload.as_object_mut()) {
            map.insert("resource".into(), resource.clone());
        }
        encode_header(payload.to_string().as_bytes())
    }

    /// The `X-PAYMENT` value: a v1 payload for `network` (a v1 name).
    pub fn v1_header(&self, network: &str) -> String {
        let payload = json!({"x402Version": 1, "scheme": "exact", "network": network, "payload": self.payload_json()});
        encode_header(payload.to_string().as_bytes())
    }
}

/// Signs `TransferWithAuthorization` for `terms` with the given window and nonce.
pub fn sign(
    payer: &Payer,
    terms: &Terms,
    valid_after: u64,
    valid_before: u64,
    nonce: B256,
) -> Result<SignedAuthorization, ClientError> {
    let domain = terms.domain_separator();
    let digest = transfer_digest(
        &domain,
        payer.address,
        terms.pay_to,
        terms.amount,
        valid_after,
        valid_before,
        nonce,
    );
    let signature = payer.sign_digest(digest)?;
    Ok(SignedAuthorization {
        from: payer.address,
        to: terms.pay_to,
        value: terms.amount,
        valid_after,
        valid_before,
        nonce,
        signature,
    })
}

/// 32 random bytes for a nonce.
pub fn random_nonce() -> B256 {
    B256::random()
}
