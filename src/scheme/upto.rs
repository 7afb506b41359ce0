//! `upto`: a Permit2 `permitWitnessTransferFrom` for at most a ceiling, charged for what the
//! response delivered once it ended, settled many per transaction through levy's batcher
//! (the witness's facilitator), and reconciled from Permit2's nonce bitmap and the batcher's
//! `UptoSettled` events. Calldata and decoding live in [`calls`].

pub mod calls;

use alloy_primitives::{Address, Bytes};

use super::{Charge, PaymentScheme, Read, SchemeError, Targets, UseEvents};
use crate::pricing::Requirement;
use crate::record::PaymentRecord;
use crate::verify::{self, Policy, Presented, Rejection, VerifiedPayment};
use crate::x402::{PaymentPayload, PERMIT2_ADDRESS};

/// The `upto` scheme (Permit2 and x402's upto proxy).
#[derive(Debug, Clone, Copy, Default)]
pub struct Upto;

impl PaymentScheme for Upto {
    fn name(&self) -> &'static str {
        crate::x402::SCHEME_UPTO
    }

    fn verify(
        &self,
        payment: &PaymentPayload,
        signature: &Presented,
        requirement: &Requirement,
        index: usize,
        now: u64,
        policy: &Policy,
    ) -> Result<VerifiedPayment, Rejection> {
        verify::upto::verify_v2(payment, signature, requirement, index, now, policy)
    }

    /// Permit2 nonces are per owner across tokens: keyed under Permit2, apart from the
    /// token's EIP-3009 nonces.
    fn namespace(&self, _token: Address) -> Address {
        PERMIT2_ADDRESS
    }

    fn replayed(&self) -> Rejection {
        Rejection::Permit2NonceUsed
    }

    fn charge(&self) -> Charge {
        Charge::Metered
    }

    fn batch_call(
        &self,
        payments: &[PaymentRecord],
        targets: &Targets,
    ) -> Result<(Address, Bytes), SchemeError> {
        let batcher = targets.batcher.ok_or(SchemeError::NoBatcher)?;
        Ok((batcher, calls::settle_calldata(payments)))
    }

    fn batch_outcomes(
        &self,
        _payments: &[PaymentRecord],
        output: &[u8],
    ) -> Result<Vec<bool>, SchemeError> {
        calls::decode_settled(output).map_err(|e| SchemeError::Decode {
            call: "LevyBatcher.settle",
            message: e.to_string(),
        })
    }

    fn used_read(&self, payment: &PaymentRecord) -> Read {
        let (data, _) = calls::bitmap_call(payment.payer, payment.nonce);
        Read {
            target: PERMIT2_ADDRESS,
            data: data.into(),
        }
    }

    fn is_used(&self, payment: &PaymentRecord, output: &[u8]) -> Option<bool> {
        let (_, bit) = calls::bitmap_call(payment.payer, payment.nonce);
        calls::bit_is_set(output, bit)
    }

    fn use_events(&self, _token: Address, targets: &Targets) -> Result<UseEvents, SchemeError> {
        Ok(UseEvents {
            emitter: targets.batcher.ok_or(SchemeError::NoBatcher)?,
            used: calls::SETTLED_SIGNATURE,
            canceled: None,
        })
    }
}
