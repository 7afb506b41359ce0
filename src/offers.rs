//! Signed offers and receipts (the x402 `offer-receipt` extension): levy's issuer key signs
//! each `accepts` entry of a 402 as an offer, and each paid response's receipt (who paid,
//! for which resource, on which network, when), as EIP-712 typed data or as a compact JWS
//! (ES256K) whose `kid` names the key in levy's `did:web` document. Pure: the key is given,
//! nothing here reads files or the network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::{keccak256, Address, B256, U256};
use alloy_sol_types::{eip712_domain, sol, Eip712Domain, SolStruct};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use secp256k1::{Message, PublicKey, SecretKey, SECP256K1};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::sync::lock;
use crate::x402::PaymentRequirementsV2;

/// The extension's key in `extensions`.
pub const OFFER_RECEIPT: &str = "offer-receipt";

/// The version of the offer and receipt payloads.
const VERSION: u64 = 1;

/// The verification method's fragment in levy's DID document.
const KEY_FRAGMENT: &str = "offer-key";

sol! {
    /// What an offer signs (the extension's `Offer` type).
    struct Offer {
        uint256 version;
        string resourceUrl;
        string scheme;
        string network;
        string asset;
        string payTo;
        string amount;
        uint256 validUntil;
    }

    /// What a receipt signs (the extension's `Receipt` type).
    struct Receipt {
        uint256 version;
        string network;
        string resourceUrl;
        string payer;
        uint256 issuedAt;
        string transaction;
    }
}

fn offer_domain() -> Eip712Domain {
    eip712_domain! { name: "x402 offer", version: "1", chain_id: 1, }
}

fn receipt_domain() -> Eip712Domain {
    eip712_domain! { name: "x402 receipt", version: "1", chain_id: 1, }
}

/// How offers and receipts are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// EIP-712 typed data: the payload travels beside a 65-byte signature, and anyone
    /// recovers the signer's address.
    Eip712,
    /// A compact JWS (ES256K) over the canonical payload; its `kid` is levy's `did:web` key.
    Jws,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Eip712 => "eip712",
            Format::Jws => "jws",
        }
    }
}

/// The key that signs offers and receipts, and how.
#[derive(Clone)]
pub struct Issuer {
    key: SecretKey,
    format: Format,
    /// How long a signed offer stays valid; `None`: each requirement's `maxTimeoutSeconds`.
    validity: Option<Duration>,
    /// Offers signed lately, given again while most of their validity is left.
    signed: Arc<Mutex<HashMap<OfferKey, Signed>>>,
}

/// Which offers: the route's (by the caller's number for it), for a resource URL, under
/// a `did:web`.
type OfferKey = (usize, String, String);

/// A signed `offer-receipt` extension and until when it is given again (unix seconds).
struct Signed {
    reuse_until: u64,
    extension: Arc<str>,
}

/// The most signed offers kept for reuse; past it they are all dropped and signed again.
const SIGNED_OFFERS_KEPT: usize = 10_000;

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("address", &self.address())
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// Why a key cannot sign.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a secp256k1 private key (64 hex digits)")]
pub struct BadKey;

impl Issuer {
    /// An issuer with the private key in `hex` (with or without `0x`).
    pub fn from_hex(hex: &str, format: Format, validity: Option<Duration>) -> Result<Self, BadKey> {
        let bytes: B256 = hex.trim().parse().map_err(|_| BadKey)?;
        let key = SecretKey::from_byte_array(&bytes.0).map_err(|_| BadKey)?;
        Ok(Self {
            key,
            format,
            validity,
            signed: Arc::default(),
        })
    }

    /// A fresh random key, as hex, for a demo issuer.
    pub fn generate_hex() -> String {
        loop {
            let candidate = B256::random();
            if SecretKey::from_byte_array(&candidate.0).is_ok() {
                return candidate.to_string();
            }
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The address of the key (what an EIP-712 signature recovers to).
    pub fn address(&self) -> Address {
        let public = self.public_key().serialize_uncompressed();
        Address::from_slice(&keccak256(&public[1..])[12..])
    }

    fn public_key(&self) -> PublicKey {
        PublicKey::from_secret_key(SECP256K1, &self.key)
    }

    /// [`Issuer::offers`] as JSON text, signed again only once a quarter of the offers'
    /// validity has passed since they were signed: a 402 costs a signature per
    /// `accepts` entry otherwise (five times the CPU of one without offers). `route` tells
    /// the caller's routes apart (their `accepts` differ).
    pub fn offers_text(
        &self,
        route: usize,
        did: &str,
        resource_url: &str,
        accepts: &[PaymentRequirementsV2],
        now: u64,
    ) -> Arc<str> {
        let key = (route, did.to_owned(), resource_url.to_owned());
        if let Some(signed) = lock(&self.signed).get(&key) {
            if now < signed.reuse_until {
                return Arc::clone(&signed.extension);
            }
        }
        let shortest = accepts
            .iter()
            .map(|a| self.validity.map_or(a.max_timeout_seconds, |v| v.as_secs()))
            .min()
            .unwrap_or(0);
        let extension: Arc<str> = self
            .offers(did, resource_url, accepts, now)
            .to_string()
            .into();
        let mut signed = lock(&self.signed);
        if signed.len() >= SIGNED_OFFERS_KEPT {
            signed.clear();
        }
        signed.insert(
            key,
            Signed {
                reuse_until: now + shortest / 4,
                extension: Arc::clone(&extension),
            },
        );
        extension
    }

    /// The `offer-receipt` extension of a 402 for `resource_url`: one signed offer per
    /// `accepts` entry, valid from `now`.
    pub fn offers(
        &self,
        did: &str,
        resource_url: &str,
        accepts: &[PaymentRequirementsV2],
        now: u64,
    ) -> Value {
        let offers: Vec<Value> = accepts
            .iter()
            .enumerate()
            .map(|(index, accept)| {
                let validity = self
                    .validity
                    .map_or(accept.max_timeout_seconds, |v| v.as_secs());
                let valid_until = now.saturating_add(validity);
                let payload = json!({
                    "version": VERSION,
                    "resourceUrl": resource_url,
                    "scheme": accept.scheme,
                    "network": accept.network,
                    "asset": accept.asset,
                    "payTo": accept.pay_to,
                    "amount": accept.amount,
                    "validUntil": valid_until,
                });
                match self.format {
                    Format::Eip712 => {
                        let typed = Offer {
                            version: U256::from(VERSION),
                            resourceUrl: resource_url.to_owned(),
                            scheme: accept.scheme.clone(),
                            network: accept.network.clone(),
                            asset: accept.asset.clone(),
                            payTo: accept.pay_to.clone(),
                            amount: accept.amount.clone(),
                            validUntil: U256::from(valid_until),
                        };
                        let signature = self.sign_eip712(typed.eip712_signing_hash(&offer_domain()));
                        json!({"format": "eip712", "acceptIndex": index, "payload": payload, "signature": signature})
                    }
                    Format::Jws => json!({
                        "format": "jws",
                        "acceptIndex": index,
                        "signature": self.sign_jws(did, &payload),
                    }),
                }
            })
            .collect();
        json!({ "info": { "offers": offers }, "schema": offer_schema() })
    }

    /// The `offer-receipt` extension of a paid response: `payer` paid for `resource_url`
    /// on `network` at `now`; `transaction` when it is already on chain.
    pub fn receipt(
        &self,
        did: &str,
        resource_url: &str,
        payer: Address,
        network: &str,
        transaction: Option<&str>,
        now: u64,
    ) -> Value {
        let payer = payer.to_checksum(None);
        let receipt = match self.format {
            Format::Eip712 => {
                let transaction = transaction.unwrap_or_default();
                let typed = Receipt {
                    version: U256::from(VERSION),
                    network: network.to_owned(),
                    resourceUrl: resource_url.to_owned(),
                    payer: payer.clone(),
                    issuedAt: U256::from(now),
                    transaction: transaction.to_owned(),
                };
                let signature = self.sign_eip712(typed.eip712_signing_hash(&receipt_domain()));
                json!({
                    "format": "eip712",
                    "payload": {
                        "version": VERSION,
                        "network": network,
                        "resourceUrl": resource_url,
                        "payer": payer,
                        "issuedAt": now,
                        "transaction": transaction,
                    },
                    "signature": signature,
                })
            }
            Format::Jws => {
                let mut payload = json!({
                    "version": VERSION,
                    "network": network,
                    "resourceUrl": resource_url,
                    "payer": payer,
                    "issuedAt": now,
                });
                if let Some(transaction) = transaction {
                    payload["transaction"] = json!(transaction);
                }
                json!({"format": "jws", "signature": self.sign_jws(did, &payload)})
            }
        };
        json!({ "info": { "receipt": receipt }, "schema": receipt_schema() })
    }

    /// levy's DID document for `did` (`did:web:<host>`): the key as a JWK and as an
    /// account, the one assertion method.
    pub fn did_document(&self, did: &str) -> Value {
        let id = format!("{did}#{KEY_FRAGMENT}");
        json!({
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/suites/jws-2020/v1"],
            "id": did,
            "verificationMethod": [{
                "id": id,
                "type": "JsonWebKey2020",
                "controller": did,
                "publicKeyJwk": self.jwk(),
                "blockchainAccountId": format!("eip155:1:{}", self.address().to_checksum(None)),
            }],
            "assertionMethod": [id],
        })
    }

    /// The public key as a JWK (`EC`, `secp256k1`).
    pub fn jwk(&self) -> Value {
        let public = self.public_key().serialize_uncompressed();
        json!({
            "kty": "EC",
            "crv": "secp256k1",
            "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&public[33..65]),
        })
    }

    /// A 65-byte `r ‖ s ‖ v` signature of an EIP-712 digest, as hex.
    fn sign_eip712(&self, digest: B256) -> String {
        let message = Message::from_digest(digest.0);
        let (recovery, compact) = SECP256K1
            .sign_ecdsa_recoverable(&message, &self.key)
            .serialize_compact();
        let mut bytes = compact.to_vec();
        bytes.push(27 + u8::from(i32::from(recovery) == 1));
        format!("0x{}", alloy_primitives::hex::encode(bytes))
    }

    /// A compact JWS (ES256K) of `payload`, with `kid` naming the key in `did`'s document.
    fn sign_jws(&self, did: &str, payload: &Value) -> String {
        // serde_json writes object keys sorted: the extension's canonical form.
        let (header, signature) = self.jws_parts(did, payload.to_string().as_bytes());
        format!(
            "{header}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(payload.to_string())
        )
    }

    /// A compact JWS (ES256K) of `document` with its payload detached (RFC 7515, appendix
    /// F): `<header>..<signature>`; a reader puts the base64url of the bytes it received
    /// between the dots to verify it.
    pub fn sign_detached(&self, did: &str, document: &[u8]) -> String {
        let (header, signature) = self.jws_parts(did, document);
        format!("{header}..{signature}")
    }

    /// A JWS's protected header and signature over `payload`, base64url.
    fn jws_parts(&self, did: &str, payload: &[u8]) -> (String, String) {
        let header = json!({"alg": "ES256K", "kid": format!("{did}#{KEY_FRAGMENT}")});
        let header = URL_SAFE_NO_PAD.encode(header.to_string());
        let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
        let digest: [u8; 32] = Sha256::digest(input.as_bytes()).into();
        let signature = SECP256K1.sign_ecdsa(&Message::from_digest(digest), &self.key);
        (
            header,
            URL_SAFE_NO_PAD.encode(signature.serialize_compact()),
        )
    }
}

/// `did:web` of a host (`api.example.com`, or `127.0.0.1:8080` with its port encoded).
pub fn did_web(host: &str) -> String {
    format!("did:web:{}", host.replace(':', "%3A"))
}

fn offer_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"offers": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "format": {"type": "string"},
                "acceptIndex": {"type": "integer"},
                "payload": {"type": "object"},
                "signature": {"type": "string"},
            },
            "required": ["format", "signature"],
        }}},
        "required": ["offers"],
    })
}

fn receipt_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"receipt": {
            "type": "object",
            "properties": {
                "format": {"type": "string"},
                "payload": {"type": "object"},
                "signature": {"type": "string"},
            },
            "required": ["format", "signature"],
        }},
        "required": ["receipt"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

    #[test]
    fn an_eip712_receipt_recovers_to_the_issuer_address() {
        let issuer = Issuer::from_hex(KEY, Format::Eip712, None).expect("key");
        assert_eq!(
            issuer.address(),
            "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
                .parse::<Address>()
                .expect("address")
        );
        let ext = issuer.receipt(
            "did:web:x",
            "https://x/a",
            Address::ZERO,
            "eip155:8453",
            None,
            7,
        );
        let receipt = &ext["info"]["receipt"];
        let signature: alloy_primitives::Signature = receipt["signature"]
            .as_str()
            .expect("hex")
            .parse()
            .expect("signature");
        let typed = Receipt {
            version: U256::from(1),
            network: "eip155:8453".into(),
            resourceUrl: "https://x/a".into(),
            payer: Address::ZERO.to_checksum(None),
            issuedAt: U256::from(7),
            transaction: String::new(),
        };
        let recovered = signature
            .recover_address_from_prehash(&typed.eip712_signing_hash(&receipt_domain()))
            .expect("recover");
        assert_eq!(recovered, issuer.address());
    }

    #[test]
    fn signed_offers_are_given_again_until_a_quarter_of_their_validity_has_passed() {
        let issuer = Issuer::from_hex(KEY, Format::Eip712, None).expect("key");
        let accepts = [PaymentRequirementsV2 {
            scheme: "exact".into(),
            network: "eip155:8453".into(),
            amount: "1000".into(),
            asset: "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913".into(),
            pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
            max_timeout_seconds: 300,
            extra: serde_json::Map::new(),
        }];
        let offer = |route: usize, url: &str, now: u64| {
            issuer.offers_text(route, "did:web:x", url, &accepts, now)
        };
        let first = offer(1, "https://x/a", 1_000);
        assert_eq!(
            offer(1, "https://x/a", 1_074),
            first,
            "within 300 / 4 seconds"
        );
        assert_ne!(offer(1, "https://x/b", 1_000), first, "another resource");
        assert_ne!(offer(2, "https://x/a", 1_010), first, "another route");
        let later = offer(1, "https://x/a", 1_075);
        assert_ne!(later, first, "signed again");
        let valid_until = |text: &str| {
            let v: Value = serde_json::from_str(text).expect("json");
            v["info"]["offers"][0]["payload"]["validUntil"].clone()
        };
        assert_eq!(valid_until(&later), json!(1_375));
    }

    #[test]
    fn a_jws_names_its_key_and_carries_the_payload() {
        let issuer = Issuer::from_hex(KEY, Format::Jws, None).expect("key");
        let ext = issuer.receipt(
            &did_web("127.0.0.1:8080"),
            "http://127.0.0.1:8080/a",
            Address::ZERO,
            "eip155:8453",
            Some("0xabc"),
            7,
        );
        let jws = ext["info"]["receipt"]["signature"].as_str().expect("jws");
        let parts: Vec<&str> = jws.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
        assert_eq!(header["kid"], "did:web:127.0.0.1%3A8080#offer-key");
        let payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(payload["transaction"], "0xabc");
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).expect("b64").len(), 64);
    }

    #[test]
    fn a_bad_key_is_refused() {
        assert_eq!(
            Issuer::from_hex("0x12", Format::Jws, None).map(|_| ()),
            Err(BadKey)
        );
        assert!(Issuer::from_hex(&Issuer::generate_hex(), Format::Jws, None).is_ok());
    }
}
