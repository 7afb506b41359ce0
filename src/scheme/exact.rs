//! `exact`: an EIP-3009 `transferWithAuthorization` for exactly the price, charged whole when
//! the origin serves the response, batched as `aggregate3` calls through Multicall3 with
//! `allowFailure`, and reconciled from `authorizationState` and the token's
//! `AuthorizationUsed`/`AuthorizationCanceled` events. Its calldata is built in [`calls`].

pub mod calls;

use alloy::sol_types::{SolCall, SolEvent};
use alloy_primitives::{Address, Bytes};

use super::{Charge, IMulticall3, PaymentScheme, Read, SchemeError, Targets, UseEvents};
use crate::pricing::Requirement;
use crate::record::PaymentRecord;
use crate::verify::{self, Policy, Presented, Rejection, VerifiedPayment};
use crate::x402::PaymentPayload;
use calls::{payment_calls, IEip3009};

/// The `exact` scheme (EIP-3009).
#[derive(Debug, Clone, Copy, Default)]
pub struct Exact;

impl PaymentScheme for Exact {
    fn name(&self) -> &'static str {
        crate::x402::SCHEME_EXACT
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
        verify::verify_exact_v2(payment, signature, requirement, index, now, policy)
    }

    fn namespace(&self, token: Address) -> Address {
        token
    }

    fn replayed(&self) -> Rejection {
        Rejection::AlreadyUsed
    }

    fn charge(&self) -> Charge {
        Charge::Whole
    }

    fn batch_call(
        &self,
        payments: &[PaymentRecord],
        targets: &Targets,
    ) -> Result<(Address, Bytes), SchemeError> {
        let calls: Vec<IMulticall3::Call3> = payments.iter().flat_map(payment_calls).collect();
        Ok((
            targets.multicall,
            IMulticall3::aggregate3Call { calls }.abi_encode().into(),
        ))
    }

    fn batch_outcomes(
        &self,
        payments: &[PaymentRecord],
        output: &[u8],
    ) -> Result<Vec<bool>, SchemeError> {
        let results = IMulticall3::aggregate3Call::abi_decode_returns(output).map_err(|e| {
            SchemeError::Decode {
                call: "aggregate3",
                message: e.to_string(),
            }
        })?;
        // Each payment's transfer is the last of its calls (an ERC-6492 wallet's deployment
        // comes first).
        let mut next = 0;
        payments
            .iter()
            .map(|p| {
                next += payment_calls(p).len();
                results
                    .get(next - 1)
                    .map(|r| r.success)
                    .ok_or_else(|| SchemeError::Decode {
                        call: "aggregate3",
                        message: "fewer results than calls".into(),
                    })
            })
            .collect()
    }

    fn used_read(&self, payment: &PaymentRecord) -> Read {
        Read {
            target: payment.asset,
            data: IEip3009::authorizationStateCall {
                authorizer: payment.payer,
                nonce: payment.nonce,
            }
            .abi_encode()
            .into(),
        }
    }

    fn is_used(&self, _payment: &PaymentRecord, output: &[u8]) -> Option<bool> {
        IEip3009::authorizationStateCall::abi_decode_returns(output).ok()
    }

    fn use_events(&self, token: Address, _targets: &Targets) -> Result<UseEvents, SchemeError> {
        Ok(UseEvents {
            emitter: token,
            used: IEip3009::AuthorizationUsed::SIGNATURE_HASH,
            canceled: Some(IEip3009::AuthorizationCanceled::SIGNATURE_HASH),
        })
    }
}
