//! What differs between x402 payment schemes, behind one trait: how a payload is verified
//! against the requirement it accepted, the replay key levy reserves for it and until when,
//! how its charge is fixed once the response is known, and how a batch of its payments is
//! settled and reconciled on chain. `exact` (EIP-3009) lives in `scheme/exact.rs`, `upto`
//! (Permit2 through x402's upto proxy) in `scheme/upto.rs`; the verifier, the proxy and the
//! settlement engine ask a payment for its [`PaymentScheme`] instead of branching on it.
//! Pure: each scheme owns its contracts' ABI, builds its calls and decodes the answers;
//! `settle::chain` sends them.

pub(crate) mod exact;
pub(crate) mod upto;

use alloy::sol;
use alloy_primitives::{Address, Bytes, B256};

use crate::nonce::NonceKey;
use crate::pricing::{Requirement, Scheme};
use crate::record::PaymentRecord;
use crate::verify::{self, Authorized, Policy, Presented, Rejection, VerifiedPayment};
use crate::x402::{PaymentPayload, PaymentRequirementsV2};

pub use exact::Exact;
pub use upto::Upto;

sol! {
    /// Multicall3: a batch of `exact` transfers, and the reads levy groups into one call.
    interface IMulticall3 {
        struct Call3 { address target; bool allowFailure; bytes callData; }
        struct Result { bool success; bytes returnData; }
        function aggregate3(Call3[] calldata calls) external payable returns (Result[] memory returnData);
        function getBlockNumber() external view returns (uint256 blockNumber);
    }
}

/// The `exact` scheme.
pub static EXACT: Exact = Exact;
/// The `upto` scheme.
pub static UPTO: Upto = Upto;
/// Every scheme levy speaks (a receipt's logs are read against each).
pub static ALL: [&dyn PaymentScheme; 2] = [&EXACT, &UPTO];

/// Verifies a payment header against a route's requirements (`requirements[i]` was issued as
/// `issued[i]`): decoded once, then checked by the scheme of the requirement it accepted (v2)
/// or as `exact` (v1).
pub fn verify(
    header: &[u8],
    requirements: &[Requirement],
    issued: &[PaymentRequirementsV2],
    now: u64,
    policy: &Policy,
) -> Result<VerifiedPayment, Rejection> {
    let payment = verify::decode(header)?;
    let signature = verify::parse_signature(&payment.payload.signature)?;
    let retry_id = crate::retry::payment_id(payment.extensions.as_ref());
    let verified = match payment.x402_version {
        2 => {
            let accepted = payment
                .accepted
                .as_ref()
                .ok_or(Rejection::Malformed("accepted"))?;
            let index = verify::match_v2(accepted, issued)?;
            let requirement = requirements
                .get(index)
                .ok_or(Rejection::NoMatchingRequirements)?;
            let scheme = requirement
                .scheme
                .implementation()
                .ok_or(Rejection::Malformed("payload.type"))?;
            scheme.verify(&payment, &signature, requirement, index, now, policy)
        }
        1 => verify::verify_exact_v1(&payment, &signature, requirements, now, policy),
        other => Err(Rejection::UnsupportedVersion(other)),
    }?;
    Ok(VerifiedPayment {
        retry_id,
        ..verified
    })
}

/// How a scheme's charge is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// The whole authorized amount, once the origin's status says the response is served
    /// (below 400).
    Whole,
    /// Usage × unit price, at most the authorized ceiling, once the response has ended.
    Metered,
}

/// What levy reserves in its replay set for a payment, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    pub key: NonceKey,
    /// Unix seconds after which the authorization cannot be used on chain any more.
    pub until: u64,
}

/// The contracts a chain's payments settle through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    /// Multicall3, through which `exact` transfers are batched.
    pub multicall: Address,
    /// levy's batcher, the only account allowed to settle its `upto` payments.
    pub batcher: Option<Address>,
}

/// One contract read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub target: Address,
    pub data: Bytes,
}

/// The event that says an authorization was used, and the one that says it was canceled,
/// each with `(payer, nonce)` as topics 1 and 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UseEvents {
    /// The contract that emits them.
    pub emitter: Address,
    pub used: B256,
    pub canceled: Option<B256>,
}

/// Why a scheme cannot settle on a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemeError {
    #[error("no batcher is configured for upto payments on this network")]
    NoBatcher,
    #[error("cannot decode {call}: {message}")]
    Decode { call: &'static str, message: String },
}

/// One x402 payment scheme: everything that differs between schemes, and nothing else.
pub trait PaymentScheme: Sync {
    /// Its x402 name (`exact`, `upto`).
    fn name(&self) -> &'static str;

    /// Checks an x402 v2 payload against the requirement it accepted (`index` in the
    /// route's list) at `now`: every field, the deadline rules of `policy`, the signature.
    fn verify(
        &self,
        payment: &PaymentPayload,
        signature: &Presented,
        requirement: &Requirement,
        index: usize,
        now: u64,
        policy: &Policy,
    ) -> Result<VerifiedPayment, Rejection>;

    /// The contract whose nonce space a payment of `token` lives in (the first part of its
    /// replay key): the token for EIP-3009, Permit2 for Permit2 nonces.
    fn namespace(&self, token: Address) -> Address;

    /// What levy reserves for a verified payment, and until when.
    fn replay(&self, payment: &VerifiedPayment) -> Replay {
        Replay {
            key: payment.key,
            until: payment.valid_before,
        }
    }

    /// The refusal of a payment whose replay key is already used.
    fn replayed(&self) -> Rejection;

    /// How its charge is fixed.
    fn charge(&self) -> Charge;

    /// Where a batch of its payments is sent, and the calldata; each payment succeeds or
    /// fails alone.
    fn batch_call(
        &self,
        payments: &[PaymentRecord],
        targets: &Targets,
    ) -> Result<(Address, Bytes), SchemeError>;

    /// Whether each payment of the batch succeeded, from the batch call's return data
    /// (simulated before sending).
    fn batch_outcomes(
        &self,
        payments: &[PaymentRecord],
        output: &[u8],
    ) -> Result<Vec<bool>, SchemeError>;

    /// The read that says whether a payment's authorization is used on chain.
    fn used_read(&self, payment: &PaymentRecord) -> Read;

    /// Whether the answer to [`PaymentScheme::used_read`] says used; `None` if it is not
    /// one.
    fn is_used(&self, payment: &PaymentRecord, output: &[u8]) -> Option<bool>;

    /// The events that tell which transaction used a payment of `token`, or canceled it.
    fn use_events(&self, token: Address, targets: &Targets) -> Result<UseEvents, SchemeError>;
}

impl Scheme {
    /// The scheme a requirement is issued under; `None` for channel vouchers, which are
    /// not one-off authorizations (see `channel`).
    pub fn implementation(&self) -> Option<&'static dyn PaymentScheme> {
        match self {
            Scheme::Exact => Some(&EXACT),
            Scheme::Upto { .. } => Some(&UPTO),
            Scheme::Batch { .. } => None,
        }
    }
}

impl Authorized {
    /// The scheme of what a verified payment authorizes.
    pub fn scheme(&self) -> &'static dyn PaymentScheme {
        match self {
            Authorized::Exact => &EXACT,
            Authorized::Upto { .. } => &UPTO,
        }
    }
}

impl VerifiedPayment {
    /// Its scheme.
    pub fn scheme(&self) -> &'static dyn PaymentScheme {
        self.authorized.scheme()
    }
}

impl PaymentRecord {
    /// The scheme of a journaled payment.
    pub fn scheme(&self) -> &'static dyn PaymentScheme {
        match self.upto {
            None => &EXACT,
            Some(_) => &UPTO,
        }
    }

    /// `(namespace, payer, nonce)` of its authorization: the replay set's and the
    /// receipts' key.
    pub fn authorization_key(&self) -> (Address, Address, B256) {
        (self.scheme().namespace(self.asset), self.payer, self.nonce)
    }
}

/// The authorization a receipt's log says was used, as `(namespace, payer, nonce)`, if it is
/// one of some scheme's use events.
pub fn used_in_log(
    emitter: Address,
    topics: &[B256],
    targets: &Targets,
) -> Option<(Address, Address, B256)> {
    let [signature, payer, nonce] = topics else {
        return None;
    };
    ALL.iter().find_map(|scheme| {
        let events = scheme.use_events(emitter, targets).ok()?;
        (events.emitter == emitter && events.used == *signature).then(|| {
            (
                scheme.namespace(emitter),
                Address::from_word(*payer),
                *nonce,
            )
        })
    })
}
