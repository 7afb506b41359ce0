//! Admitting a reserved payment before forwarding: the replay claim across replicas, the
//! payer's funds and the exposure caps, settle-first, a facilitator's or the chain's check
//! of a contract wallet's signature; and the answers levy gives itself when it refuses or
//! cannot decide (402, 429, 503 with `Retry-After`).

use http::header;
use pingora::proxy::Session;

use super::ctx::{RequestCtx, STATUS_PATH};
use super::respond::Reply;
use super::tender::{ChannelStep, Release, SessionStep};
use super::{LevyProxy, Outcome};
use crate::config::{Access, Config, Paywall, SettleMode};
use crate::metrics::metrics;
use crate::scheme::Charge;
use crate::settle::exposure::{Admission, Pressure};
use crate::settle::facilitator::Verdict;
use crate::settle::funds::{FundsView, OnRpcError, UptoFunds};
use crate::settle::{OnBacklog, Reason, SettleError, Settlement, SignatureCheck, Unavailable};
use crate::state::{ReplayClaim, Reserved};
use crate::verify::{Authorized, PayerSignature, Rejection, VerifiedPayment};

impl LevyProxy {
    /// Releases the request's reserved payment uncharged, for `why`, against levy's replay
    /// set and the route's counters. A payment still reserved when the exchange fails or
    /// ends was never answered (connect failure, timeout, client gone): `Release::Unserved`.
    pub(super) fn release(&self, ctx: &mut RequestCtx, why: Release) {
        self.release_channel(ctx);
        self.cancel_draw(ctx);
        ctx.release(self.nonces.as_ref(), why);
    }

    /// Refuses a reserved payment with a 402 carrying `reason` (a fixed x402-style code).
    pub(super) fn refuse_payment(
        &self,
        session: &Session,
        paywall: &Paywall,
        ctx: &mut RequestCtx,
        reason: &'static str,
    ) -> Reply {
        self.release(ctx, Release::Refused(reason));
        self.challenge(session, &ctx.live.config, paywall, reason, reason)
    }

    /// With shared state, a reserved payment must also be this replica's among all replicas
    /// (one Redis round trip); `Some(reply)` refuses it: replayed or in flight elsewhere
    /// (402), or Redis unavailable (503, nothing charged).
    async fn claim_across_replicas(
        &self,
        session: &Session,
        paywall: &Paywall,
        ctx: &mut RequestCtx,
    ) -> Option<Reply> {
        let shared = self.shared.as_ref()?;
        let paid = ctx.reserved()?;
        let replay = paid.verified.scheme().replay(&paid.verified);
        match shared.claim_nonce(&replay.key, replay.until).await {
            ReplayClaim::Claimed => None,
            ReplayClaim::Used => {
                let reason = paid.verified.scheme().replayed().reason();
                Some(self.refuse_payment(session, paywall, ctx, reason))
            }
            ReplayClaim::InFlight => {
                let reason = Rejection::InFlight.reason();
                Some(self.refuse_payment(session, paywall, ctx, reason))
            }
            ReplayClaim::Unavailable(why) => Some(self.shared_unavailable(ctx, &why)),
        }
    }

    /// With shared state: counts `amount` in `payer`'s and the total exposure of every
    /// replica (one round trip) and returns the sums, this payment included; `Err` is the 402
    /// for a payer another replica denied, or the 503 when Redis cannot be asked.
    async fn shared_exposure(
        &self,
        session: &Session,
        paywall: &Paywall,
        payer: alloy_primitives::Address,
        amount: alloy_primitives::U256,
        ctx: &mut RequestCtx,
    ) -> Result<Option<crate::settle::exposure::Shares>, Reply> {
        let Some(shared) = &self.shared else {
            return Ok(None);
        };
        match shared.reserve_exposure(payer, amount).await {
            Ok(Reserved::Counted(shares)) => Ok(Some(shares)),
            Ok(Reserved::Denied(reason)) => {
                log::debug!("payer {payer} is denied by another replica: {reason}");
                Err(self.refuse_payment(session, paywall, ctx, "payer_denied"))
            }
            Err(why) => Err(self.shared_unavailable(ctx, &why)),
        }
    }

    /// The 503 for a paid request while Redis cannot be asked (nothing is charged).
    fn shared_unavailable(&self, ctx: &mut RequestCtx, why: &Unavailable) -> Reply {
        log::warn!("shared state unavailable: {why}");
        self.retry_later(
            ctx,
            "cannot check the payment with the other replicas now; retry later",
            "2",
        )
    }

    /// A payer's funds could not be read: `Ok` serves within the exposure caps, `Err` is the
    /// 503 to answer (`funds.on_rpc_error`).
    pub(super) fn funds_unread(
        &self,
        settlement: &Settlement,
        ctx: &mut RequestCtx,
    ) -> Result<(), Reply> {
        match settlement.on_rpc_error() {
            OnRpcError::ServeWithinCaps => Ok(()),
            OnRpcError::Refuse => Err(self.retry_later(
                ctx,
                "cannot check the payer's balance now; retry later with the same payment",
                "2",
            )),
        }
    }

    /// Admits a reserved payment on a route levy settles: the facilitator's `/verify` when
    /// so configured, the deny list, the payer's funds (batched routes: the cached balance
    /// must cover the payer's unsettled and in-flight payments plus this one), then its
    /// share of exposure, reserved atomically. Settles it before forwarding when the route
    /// asks for it or a cap or the loss budget does. `Some(reply)` refuses the request.
    pub(super) async fn settle_first(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> Option<Reply> {
        let route = ctx.route.clone()?;
        let Access::Priced(paywall) = &route.access else {
            return None;
        };
        if let Some(reply) = self.claim_across_replicas(session, paywall, ctx).await {
            return Some(reply);
        }
        let settlement = self.settlement.as_ref()?;
        if matches!(ctx.channel, ChannelStep::Checked { .. }) {
            return self.lease_channel(session, paywall, ctx).await;
        }
        if matches!(ctx.session, SessionStep::Proving(_)) {
            return self.admit_proof(session, paywall, ctx).await;
        }
        let paid = ctx.reserved()?;
        if settlement.verifies_remotely() {
            match settlement.verify_remotely(&paid.record(&route.name)).await {
                Verdict::Valid => {}
                Verdict::Invalid(reason) => {
                    log::info!(
                        "facilitator refused a payment on route {}: {reason}",
                        route.name
                    );
                    // Its standard x402 reason is repeated; its own words are not.
                    let code = match Reason::from_code(&reason) {
                        Reason::SettlementFailed => "facilitator_invalid",
                        code => code.as_str(),
                    };
                    return Some(self.refuse_payment(session, paywall, ctx, code));
                }
                Verdict::Unavailable(why) => {
                    // No answer is not a verdict on the payment: the client retries it.
                    log::warn!(
                        "facilitator /verify unavailable on route {}: {why}",
                        route.name
                    );
                    return Some(self.retry_later(
                        ctx,
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
            return Some(self.refuse_payment(session, paywall, ctx, "payer_denied"));
        }
        if let PayerSignature::Contract { bytes, digest } = &verified.signature {
            match settlement
                .check_signature(
                    &network,
                    super::client_ip(session),
                    verified.payer,
                    *digest,
                    bytes,
                )
                .await
            {
                SignatureCheck::Valid => {}
                SignatureCheck::Invalid => {
                    let reason = Rejection::BadSignature.reason();
                    return Some(self.refuse_payment(session, paywall, ctx, reason));
                }
                unchecked => return Some(self.signature_unchecked(ctx, unchecked)),
            }
        }
        if verified.scheme().charge() == Charge::Metered {
            return self
                .admit_metered(session, paywall, ctx, &verified, &network)
                .await;
        }
        let batched = paywall.settle != SettleMode::BeforeResponse;
        let balance = if batched && settlement.checks_funds() {
            let key = &verified.key;
            match settlement
                .funds(&network, key.chain_id, key.asset, verified.payer, key.nonce)
                .await
            {
                FundsView::Known { balance, block } => {
                    if let Some(paid) = ctx.reserved_mut() {
                        paid.admitted_block = block;
                    }
                    Some(balance)
                }
                FundsView::AuthorizationUsed => {
                    let reason = Rejection::AlreadyUsed.reason();
                    return Some(self.refuse_payment(session, paywall, ctx, reason));
                }
                FundsView::Busy => {
                    return Some(self.signature_unchecked(ctx, SignatureCheck::Busy))
                }
                FundsView::Unknown => match self.funds_unread(settlement, ctx) {
                    Ok(()) => None,
                    Err(reply) => return Some(reply),
                },
            }
        } else {
            None
        };
        let shares = match self
            .shared_exposure(session, paywall, verified.payer, verified.amount, ctx)
            .await
        {
            Ok(shares) => shares,
            Err(reply) => return Some(reply),
        };
        let (mut admission, hold) =
            settlement.reserve(verified.payer, verified.amount, balance, shares);
        if batched && admission == Admission::Defer {
            match settlement.backlog(verified.valid_before) {
                None => {}
                Some(OnBacklog::SettleFirst) => {
                    admission = Admission::SettleFirst(Pressure::Backlog);
                }
                Some(OnBacklog::Refuse) => {
                    drop(hold);
                    return Some(self.retry_later(
                        ctx,
                        "settlement is behind; retry later with the same payment",
                        "5",
                    ));
                }
            }
        }
        match admission {
            Admission::Unfunded => {
                return Some(self.refuse_payment(
                    session,
                    paywall,
                    ctx,
                    "invalid_exact_evm_insufficient_balance",
                ))
            }
            Admission::Defer if batched => {
                if let Some(paid) = ctx.reserved_mut() {
                    paid.hold = hold;
                }
                return None;
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
        let record = ctx.reserved()?.record(&route.name);
        let id = record.id.clone();
        match settlement.settle_now(record, hold).await {
            Ok(hash) => {
                ctx.settled_upfront(hash);
                None
            }
            Err(SettleError::Refused(reason)) => {
                Some(self.refuse_payment(session, paywall, ctx, reason.as_str()))
            }
            Err(SettleError::Pending) => {
                // The transfer is out there; its outcome will be reconciled. Keep the
                // authorization reserved (it expires with validBefore) and say so.
                ctx.unresolved();
                ctx.outcome = Outcome::SettlementUnavailable;
                Some(self.settlement_pending(&ctx.live.config, &id))
            }
            Err(e) => {
                log::warn!("settle before response failed on route {}: {e}", route.name);
                Some(self.retry_later(
                    ctx,
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
    pub(super) async fn admit_metered(
        &self,
        session: &Session,
        paywall: &Paywall,
        ctx: &mut RequestCtx,
        verified: &VerifiedPayment,
        network: &str,
    ) -> Option<Reply> {
        let settlement = self.settlement.as_ref()?;
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
                    self.release(ctx, Release::Refused(reason));
                    let body = serde_json::json!({
                        "error": reason,
                        "spender": crate::x402::PERMIT2_ADDRESS.to_checksum(None),
                        "message": "approve Permit2 to spend the token (or answer the eip2612GasSponsoring extension with a permit at the token's current nonce), then retry",
                    });
                    return Some(Reply::new(412, "application/json", body.to_string()));
                }
                UptoFunds::Known { balance, .. } => Some(balance),
                UptoFunds::Busy => {
                    return Some(self.signature_unchecked(ctx, SignatureCheck::Busy))
                }
                UptoFunds::Unknown => match self.funds_unread(settlement, ctx) {
                    Ok(()) => None,
                    Err(reply) => return Some(reply),
                },
            }
        } else {
            None
        };
        let shares = match self
            .shared_exposure(session, paywall, verified.payer, verified.amount, ctx)
            .await
        {
            Ok(shares) => shares,
            Err(reply) => return Some(reply),
        };
        let (admission, hold) =
            settlement.reserve(verified.payer, verified.amount, balance, shares);
        match admission {
            Admission::Unfunded => {
                Some(self.refuse_payment(session, paywall, ctx, "permit2_insufficient_balance"))
            }
            Admission::Defer if settlement.backlog(verified.valid_before).is_none() => {
                if let Some(paid) = ctx.reserved_mut() {
                    paid.hold = hold;
                }
                None
            }
            Admission::Defer | Admission::SettleFirst(_) => {
                drop(hold);
                Some(self.retry_later(
                    ctx,
                    "settlement is behind; retry later with the same payment",
                    "5",
                ))
            }
        }
    }

    /// The answer to a payment whose contract-wallet signature the chain was not asked
    /// about: 429 when the client used its checks for the minute, 503 when the chain's
    /// admission reads were all busy or it could not answer; the client may retry with the
    /// same payment.
    pub(super) fn signature_unchecked(&self, ctx: &mut RequestCtx, check: SignatureCheck) -> Reply {
        match check {
            SignatureCheck::OverBudget => {
                self.release(ctx, Release::Withdrawn);
                Reply::text(
                    429,
                    "too many signatures to check on chain from this client; retry later",
                )
                .header(header::RETRY_AFTER, "60")
            }
            SignatureCheck::Busy => self.retry_later(
                ctx,
                "levy is checking too many payments on chain at once; retry later with the same payment",
                "1",
            ),
            _ => self.retry_later(
                ctx,
                "cannot check the wallet's signature now; retry later with the same payment",
                "2",
            ),
        }
    }

    /// Drops the reservation and answers 503 with `Retry-After`: levy cannot decide now, and
    /// the client may retry with the same payment.
    pub(super) fn retry_later(
        &self,
        ctx: &mut RequestCtx,
        text: &'static str,
        seconds: &'static str,
    ) -> Reply {
        self.release(ctx, Release::Withdrawn);
        Reply::text(503, text).header(header::RETRY_AFTER, seconds)
    }

    /// The 503 for a payment whose transfer is out but unconfirmed: it names the payment
    /// and its status page, so the client can check before paying again.
    pub(super) fn settlement_pending(&self, config: &Config, id: &str) -> Reply {
        let base = config.public_url.as_deref().unwrap_or("");
        let body = serde_json::json!({
            "error": "settlement_pending",
            "paymentId": id,
            "statusUrl": format!("{base}{STATUS_PATH}{id}"),
        });
        Reply::new(503, "application/json", body.to_string()).header(header::RETRY_AFTER, "5")
    }
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
