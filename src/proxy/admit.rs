//! Admitting a reserved payment before forwarding: the replay claim across replicas, the
//! payer's funds and the exposure caps, settle-first, a facilitator's or the chain's check
//! of a contract wallet's signature. Each step returns the [`Answer`] it refuses with;
//! `rescue` writes it.

use std::net::IpAddr;
use std::sync::Arc;

use alloy_primitives::B256;
use pingora::proxy::Session;

use super::answer::{Answer, Form};
use super::ctx::RequestCtx;
use super::respond::Reply;
use super::tender::{ChannelStep, Paid, SessionStep};
use super::LevyProxy;
use crate::config::{Access, Paywall, SettleMode};
use crate::metrics::metrics;
use crate::scheme::Charge;
use crate::settle::exposure::{Admission, Pressure};
use crate::settle::facilitator::Verdict;
use crate::settle::funds::{FundsView, OnRpcError, UptoFunds};
use crate::settle::{AdmissionPort, OnBacklog, Reason, SettleError, SignatureCheck, Unavailable};
use crate::state::{ClaimAndReserve, IdClaim, ReplayClaim, Shared};
use crate::verify::{Authorized, PayerSignature, Rejection};

impl LevyProxy {
    /// With shared state, a reserved payment must also be this replica's among all replicas
    /// (one Redis round trip; where levy settles, admission makes it with the payment's
    /// exposure); it is refused when replayed or in flight elsewhere (402), or withdrawn
    /// when Redis cannot be asked (503, nothing charged).
    async fn claim_across_replicas(&self, ctx: &mut RequestCtx) -> Result<Claimed, Answer> {
        let (Some(shared), Some(paid)) = (self.shared.as_ref(), ctx.reserved()) else {
            return Ok(Claimed::Payment);
        };
        if let (Some(id), Some(asked)) = (&paid.verified.retry_id, paid.retry_asked) {
            let (payer, until) = (paid.verified.payer, paid.verified.valid_before);
            let retries = Arc::clone(&ctx.tender.holders.retries);
            match retries
                .claim_across_replicas(id, payer, asked.fingerprint, until)
                .await
            {
                IdClaim::Claimed => {}
                IdClaim::Served(served) => {
                    ctx.serve_again(served, asked.body_len);
                    return Ok(Claimed::ServedBefore);
                }
                IdClaim::InFlight => return Err(Answer::refused(Rejection::InFlight.reason())),
                IdClaim::Conflict => {
                    return Err(Answer::refused(Rejection::IdentifierReused.reason()))
                }
                IdClaim::Unavailable(why) => return Err(shared_unavailable(&why)),
            }
        }
        let Some(paid) = ctx.reserved() else {
            return Ok(Claimed::Payment);
        };
        if self.settlement.is_some() {
            // Admission claims it together with its share of exposure, in one round trip.
            return Ok(Claimed::Payment);
        }
        let replay = paid.verified.scheme().replay(&paid.verified);
        match shared.claim_nonce(&replay.key, replay.until).await {
            ReplayClaim::Claimed => Ok(Claimed::Payment),
            ReplayClaim::Used => Err(Answer::refused(paid.verified.scheme().replayed().reason())),
            ReplayClaim::InFlight => Err(Answer::refused(Rejection::InFlight.reason())),
            ReplayClaim::Unavailable(why) => Err(shared_unavailable(&why)),
        }
    }

    /// Admits a payment held by the request phase before it is forwarded: across replicas
    /// first, then a channel voucher's lease, a bundle proof's draw, or a reserved payment's
    /// admission. `Err` is the answer that refuses it or withdraws it.
    pub(super) async fn admit(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), Answer> {
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        let Access::Priced(paywall) = &route.access else {
            return Ok(());
        };
        if self.claim_across_replicas(ctx).await? == Claimed::ServedBefore {
            return Ok(());
        }
        self.within_rate_limit(ctx).await?;
        let Some(settlement) = self.settlement.as_ref() else {
            return Ok(());
        };
        if matches!(ctx.tender.channel, ChannelStep::Checked { .. }) {
            return self.lease_channel(paywall, ctx).await;
        }
        if matches!(ctx.tender.session, SessionStep::Proving(_)) {
            return self.admit_proof(session, ctx).await;
        }
        let client = super::client_ip(session, &ctx.live.config);
        let shared = self.shared.as_ref();
        let Some(paid) = ctx.reserved_mut() else {
            return Ok(());
        };
        match admit_payment(settlement, shared, paywall, &route.name, client, paid).await? {
            Admitted::Deferred => {}
            Admitted::SettledUpfront(hash) => ctx.settled_upfront(hash),
        }
        Ok(())
    }
}

/// What the claim across replicas found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claimed {
    /// The payment is this request's (or there is nothing to claim): admission goes on.
    Payment,
    /// Its payment id was served before, by another replica: forwarded again, uncharged.
    ServedBefore,
}

/// What admission made of a reserved payment that goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admitted {
    /// Served now, settled in a batch later; its share of exposure is held with it.
    Deferred,
    /// Settled on chain before forwarding, in this transaction: the money moved whatever
    /// the origin answers.
    SettledUpfront(B256),
}

/// Admits a reserved payment on a route levy settles: the facilitator's `/verify` when
/// so configured, the deny list, the payer's funds (batched routes: the cached balance
/// must cover the payer's unsettled and in-flight payments plus this one), then its
/// share of exposure, reserved atomically. Settles it before forwarding when the route
/// asks for it or a cap or the loss budget does.
pub(super) async fn admit_payment<P: AdmissionPort>(
    settlement: &P,
    shared: Option<&Shared>,
    paywall: &Paywall,
    route: &str,
    client: Option<IpAddr>,
    paid: &mut Paid,
) -> Result<Admitted, Answer> {
    if settlement.verifies_remotely() {
        match settlement.verify_remotely(&paid.record(route)).await {
            Verdict::Valid => {}
            Verdict::Invalid(reason) => {
                log::info!("facilitator refused a payment on route {route}: {reason}");
                // Its standard x402 reason is repeated; its own words are not.
                let code = match Reason::from_code(&reason) {
                    Reason::SettlementFailed => "facilitator_invalid",
                    code => code.as_str(),
                };
                return Err(Answer::refused(code));
            }
            Verdict::Unavailable(why) => {
                // No answer is not a verdict on the payment: the client retries it.
                log::warn!("facilitator /verify unavailable on route {route}: {why}");
                return Err(Answer::retry(
                        "cannot verify the payment with the facilitator now; retry later with the same payment",
                        "2",
                    ));
            }
        }
    }
    let verified = paid.verified.clone();
    let network = paid.network_name.clone();
    // The deny list costs nothing: before anything that reads the chain.
    if let Some(reason) = settlement.denied(verified.payer) {
        log::debug!("payer {} is denied: {reason}", verified.payer);
        return Err(Answer::refused("payer_denied"));
    }
    if let PayerSignature::Contract { bytes, digest } = &verified.signature {
        match settlement
            .check_signature(&network, client, verified.payer, *digest, bytes)
            .await
        {
            SignatureCheck::Valid => {}
            SignatureCheck::Invalid => {
                return Err(Answer::refused(Rejection::BadSignature.reason()))
            }
            unchecked => return Err(Answer::unchecked(unchecked)),
        }
    }
    if verified.scheme().charge() == Charge::Metered {
        return admit_metered(settlement, shared, paid, &network).await;
    }
    let batched = paywall.settle != SettleMode::BeforeResponse;
    let balance = if batched && settlement.checks_funds() {
        let key = &verified.key;
        match settlement
            .funds(&network, key.chain_id, key.asset, verified.payer, key.nonce)
            .await
        {
            FundsView::Known { balance, block } => {
                paid.admitted_block = block;
                Some(balance)
            }
            FundsView::AuthorizationUsed => {
                return Err(Answer::refused(Rejection::AlreadyUsed.reason()))
            }
            FundsView::Busy => return Err(Answer::unchecked(SignatureCheck::Busy)),
            FundsView::Unknown => {
                funds_unread(settlement)?;
                None
            }
        }
    } else {
        None
    };
    let shares = shared_exposure(shared, &verified).await?;
    let (mut admission, hold) =
        settlement.reserve(verified.payer, verified.amount, balance, shares);
    if batched && admission == Admission::Defer {
        match settlement.backlog(verified.valid_before) {
            None => {}
            Some(OnBacklog::SettleFirst) => {
                admission = Admission::SettleFirst(Pressure::Backlog);
            }
            Some(OnBacklog::Refuse) => return Err(behind()),
        }
    }
    match admission {
        Admission::Unfunded => {
            return Err(Answer::refused("invalid_exact_evm_insufficient_balance"))
        }
        Admission::Defer if batched => {
            paid.hold = hold;
            return Ok(Admitted::Deferred);
        }
        Admission::Defer => {}
        Admission::SettleFirst(pressure) => {
            if batched {
                metrics()
                    .settle_first
                    .with_label_values(&[pressure.as_str()])
                    .inc();
            }
        }
    }
    let record = paid.record(route);
    let id = record.id.clone();
    match settlement.settle_now(record, hold).await {
        Ok(hash) => Ok(Admitted::SettledUpfront(hash)),
        Err(SettleError::Refused(reason)) => Err(Answer::refused(reason.as_str())),
        // The transfer is out there; its outcome will be reconciled. Keep the
        // authorization reserved (it expires with validBefore) and say so.
        Err(SettleError::Pending) => Err(Answer::Pending(id)),
        Err(e) => {
            log::warn!("settle before response failed on route {route}: {e}");
            Err(Answer::retry(
                "settlement unavailable; retry later with the same payment",
                "5",
            ))
        }
    }
}

/// Admits a reserved `upto` payment: the payer's allowance to Permit2 must cover the
/// ceiling, or its EIP-2612 permit must still be usable (else 412
/// `permit2_allowance_required`, as the reference servers answer), and
/// its balance the ceiling plus its unsettled payments; the ceiling's share of exposure
/// is held until the charge is known. A metered payment cannot be settled before its
/// response, so where an exact one would settle first this one waits (503).
async fn admit_metered<P: AdmissionPort>(
    settlement: &P,
    shared: Option<&Shared>,
    paid: &mut Paid,
    network: &str,
) -> Result<Admitted, Answer> {
    let verified = &paid.verified;
    let balance = if settlement.checks_funds() {
        let chain_id = verified.key.chain_id;
        match settlement
            .upto_funds(network, chain_id, verified.token(), verified.payer)
            .await
        {
            UptoFunds::Known {
                allowance,
                permit_nonce,
                ..
            } if allowance < verified.amount
                && !permit_usable(&verified.authorized, permit_nonce) =>
            {
                let reason = "permit2_allowance_required";
                let body = serde_json::json!({
                    "error": reason,
                    "spender": crate::x402::PERMIT2_ADDRESS.to_checksum(None),
                    "message": "approve Permit2 to spend the token (or answer the eip2612GasSponsoring extension with a permit at the token's current nonce), then retry",
                });
                let reply = Reply::new(412, "application/json", body.to_string());
                return Err(Answer::Refused(reason, Form::Own(reply)));
            }
            UptoFunds::Known { balance, .. } => Some(balance),
            UptoFunds::Busy => return Err(Answer::unchecked(SignatureCheck::Busy)),
            UptoFunds::Unknown => {
                funds_unread(settlement)?;
                None
            }
        }
    } else {
        None
    };
    let shares = shared_exposure(shared, verified).await?;
    let (admission, hold) = settlement.reserve(verified.payer, verified.amount, balance, shares);
    match admission {
        Admission::Unfunded => Err(Answer::refused("permit2_insufficient_balance")),
        Admission::Defer if settlement.backlog(verified.valid_before).is_none() => {
            paid.hold = hold;
            Ok(Admitted::Deferred)
        }
        Admission::Defer | Admission::SettleFirst(_) => Err(behind()),
    }
}

/// With shared state: claims the payment's authorization for this replica and counts its
/// amount in the payer's and the total exposure of every replica (one round trip), and
/// returns the sums, this payment included; `Err` refuses a payment replayed or in flight
/// elsewhere or a payer another replica denied, or withdraws the payment when Redis cannot
/// be asked.
async fn shared_exposure(
    shared: Option<&Shared>,
    verified: &crate::verify::VerifiedPayment,
) -> Result<Option<crate::settle::exposure::Shares>, Answer> {
    let Some(shared) = shared else {
        return Ok(None);
    };
    let scheme = verified.scheme();
    let replay = scheme.replay(verified);
    let (payer, amount) = (verified.payer, verified.amount);
    match shared
        .claim_and_reserve(&replay.key, replay.until, payer, amount)
        .await
    {
        ClaimAndReserve::Counted(shares) => Ok(Some(shares)),
        ClaimAndReserve::NotClaimed(ReplayClaim::Used) => {
            Err(Answer::refused(scheme.replayed().reason()))
        }
        ClaimAndReserve::NotClaimed(_) => Err(Answer::refused(Rejection::InFlight.reason())),
        ClaimAndReserve::Denied(reason) => {
            log::debug!("payer {payer} is denied by another replica: {reason}");
            Err(Answer::refused("payer_denied"))
        }
        ClaimAndReserve::Unavailable(why) => Err(shared_unavailable(&why)),
    }
}

/// The answer while Redis cannot be asked about a paid request (nothing is charged).
fn shared_unavailable(why: &Unavailable) -> Answer {
    log::warn!("shared state unavailable: {why}");
    Answer::retry(
        "cannot check the payment with the other replicas now; retry later",
        "2",
    )
}

/// A payer's funds could not be read: `Ok` serves within the exposure caps, `Err`
/// withdraws the payment (`funds.on_rpc_error`).
fn funds_unread(settlement: &impl AdmissionPort) -> Result<(), Answer> {
    match settlement.on_rpc_error() {
        OnRpcError::ServeWithinCaps => Ok(()),
        OnRpcError::Refuse => Err(Answer::retry(
            "cannot check the payer's balance now; retry later with the same payment",
            "2",
        )),
    }
}

/// Settlement is behind: a payment that would join its backlog waits (503).
fn behind() -> Answer {
    Answer::retry(
        "settlement is behind; retry later with the same payment",
        "5",
    )
}

/// Whether an upto payment carries an EIP-2612 permit the token will still accept: signed at
/// the payer's current nonce (read with its allowance). The settler runs it before the
/// transfer, so it stands in for the allowance.
pub(super) fn permit_usable(
    authorized: &Authorized,
    permit_nonce: Option<alloy_primitives::U256>,
) -> bool {
    match authorized {
        Authorized::Upto {
            permit2612: Some(permit),
            ..
        } => permit_nonce == Some(permit.nonce),
        _ => false,
    }
}
