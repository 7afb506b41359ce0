//! The money of a request: admitting a reserved payment before forwarding (funds, exposure
//! caps, settle-first, facilitator checks), charging or releasing it on the origin's answer,
//! and fixing a metered response's charge when it ends.

use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

use super::ctx::{RequestCtx, STATUS_PATH};
use super::headers::make_private;
use super::metering::Metering;
use super::respond::Reply;
use super::tender::{ChannelStep, Release, SessionStep};
use super::{LevyProxy, Outcome};
use crate::clock::unix_now;
use crate::config::{Access, Paywall, SettleMode};
use crate::metrics::metrics;
use crate::scheme::Charge;
use crate::settle::exposure::{Admission, Pressure};
use crate::settle::facilitator::Verdict;
use crate::settle::funds::{FundsView, OnRpcError, UptoFunds};
use crate::settle::{
    OnBacklog, Reason, SettleError, Settlement, SignatureCheck, StreamClose, StreamTicket,
    Unavailable,
};
use crate::state::{Claim, Reserved};
use crate::verify::{Authorized, PayerSignature, Rejection, VerifiedPayment, Version};
use crate::x402::{SettleResponse, PAYMENT_RESPONSE, X_PAYMENT_RESPONSE};

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
        self.challenge(session, paywall, reason, reason)
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
            Claim::Claimed => None,
            Claim::Used => {
                let reason = paid.verified.scheme().replayed().reason();
                Some(self.refuse_payment(session, paywall, ctx, reason))
            }
            Claim::InFlight => {
                let reason = Rejection::InFlight.reason();
                Some(self.refuse_payment(session, paywall, ctx, reason))
            }
            Claim::Unavailable(why) => Some(self.shared_unavailable(ctx, &why)),
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
                Some(self.settlement_pending(&id))
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
    pub(super) fn settlement_pending(&self, id: &str) -> Reply {
        let live = self.live.load();
        let base = live.config.public_url.as_deref().unwrap_or("");
        let body = serde_json::json!({
            "error": "settlement_pending",
            "paymentId": id,
            "statusUrl": format!("{base}{STATUS_PATH}{id}"),
        });
        Reply::new(503, "application/json", body.to_string()).header(header::RETRY_AFTER, "5")
    }

    /// Decides the fate of a reserved payment once the upstream's status is known: below 400
    /// the payment is charged and the response carries the settlement header; 400 and above
    /// (as the reference servers do) it is released, so the client may retry with it. A
    /// metered payment starts counting instead; it is charged when the response ends.
    pub(super) async fn settle_payment(
        &self,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if matches!(ctx.channel, ChannelStep::Leased { .. }) {
            return self.settle_channel(response, ctx).await;
        }
        let nonces = self.nonces.as_ref();
        if response.status.as_u16() >= 400 && ctx.reserved().is_some() {
            self.release(ctx, Release::Unserved);
            ctx.outcome = Outcome::PaymentReleased;
            return Ok(());
        }
        if ctx.reserved().is_some_and(|paid| paid.metering.is_some()) {
            let stream = self.open_stream(ctx).await?;
            if let Some((mut paid, _)) = ctx.take_for_response() {
                if let Some(metering) = paid.metering.as_mut() {
                    metering.on_headers(response);
                    if let Some((ticket, cut_at)) = stream {
                        metering.end_by(cut_at);
                        metering.follow(ticket);
                    }
                }
                make_private(response)?;
                ctx.begin_metering(paid);
            }
            return Ok(());
        }
        self.record_charge(ctx).await?;
        let Some((paid, upfront)) = ctx.take_for_response() else {
            return Ok(());
        };
        let status = match (upfront, &self.settlement) {
            (Some(_), _) => "settled",
            (None, Some(_)) => "pending",
            (None, None) => "accepted",
        };
        let mut levy_ext = serde_json::json!({"paymentId": paid.id, "status": status});
        if self.settlement.is_some() {
            let base = ctx.live.config.public_url.as_deref().unwrap_or("");
            levy_ext["statusUrl"] =
                serde_json::Value::String(format!("{base}{STATUS_PATH}{}", paid.id));
        }
        let receipt = SettleResponse {
            success: true,
            transaction: upfront.map(|h| h.to_string()).unwrap_or_default(),
            network: paid.network.clone(),
            payer: paid.verified.payer.to_checksum(None),
            amount: None,
            extensions: Some(serde_json::json!({ "levy": levy_ext })),
            extra: None,
        };
        let encoded = receipt.header_value();
        let name = match paid.verified.version {
            Version::V2 => PAYMENT_RESPONSE,
            Version::V1 => X_PAYMENT_RESPONSE,
        };
        response.insert_header(name, encoded)?;
        make_private(response)?;
        let (amount, payer) = (paid.verified.amount, paid.verified.payer);
        ctx.charge(nonces, paid, amount);
        self.grant_bundle(response, ctx, payer).await?;
        Ok(())
    }

    /// Journals a reserved metered payment as streaming before its first byte (its
    /// authorization is then used for good; levy dying mid-stream charges what it delivered)
    /// and says when its response must end: in time for its charge to be batched and mined
    /// before the Permit2 deadline. If the journal cannot take it, nothing is charged and the
    /// request fails.
    async fn open_stream(
        &self,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<(StreamTicket, u64)>> {
        let Some(settlement) = &self.settlement else {
            return Ok(None);
        };
        let route = ctx.route_label().to_owned();
        let Some(paid) = ctx.reserved_mut() else {
            return Ok(None);
        };
        let cut_at = paid
            .verified
            .valid_before
            .saturating_sub(settlement.settle_window_seconds());
        let mut record = paid.record(&route);
        record.amount = paid
            .metering
            .as_ref()
            .map(Metering::floor)
            .unwrap_or_default();
        match settlement
            .open_stream(record, cut_at, paid.durability)
            .await
        {
            Ok(ticket) => Ok(Some((ticket, cut_at))),
            Err(e) => {
                log::error!("cannot journal metered payment {}: {e}", paid.id);
                self.release(ctx, Release::Withdrawn);
                ctx.failure = Some("cannot record the payment; nothing was charged");
                Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "journal write failed",
                ))
            }
        }
    }

    /// Makes a reserved whole-price payment's charge durable before its response leaves:
    /// journaled for a batch or, too close to its `validBefore` for one, settled now. If
    /// neither can be done, nothing is charged and the request fails with the reason.
    async fn record_charge(&self, ctx: &mut RequestCtx) -> pingora::Result<()> {
        let Some(settlement) = &self.settlement else {
            return Ok(());
        };
        let route = ctx.route_label().to_owned();
        let bundle = ctx.route.as_ref().and_then(|r| match &r.access {
            Access::Priced(paywall) => paywall.bundle,
            _ => None,
        });
        let Some(paid) = ctx.reserved_mut() else {
            return Ok(());
        };
        let expiring = paid.verified.valid_before < unix_now() + settlement.settle_window_seconds();
        let (mut record, hold) = (paid.record(&route), paid.hold.take());
        // What it buys is taken back if it fails to settle.
        record.bundle = bundle;
        let (id, durability) = (record.id.clone(), paid.durability);
        if expiring {
            // Too close to validBefore for a batch: settle before the response leaves, or
            // serve nothing.
            match settlement.settle_now(record, hold).await {
                Ok(hash) => ctx.settled_upfront(hash),
                Err(SettleError::Pending) => {
                    // The transfer is out there: name the payment and its status page, as
                    // the request-phase settlement does.
                    ctx.unresolved();
                    ctx.failure_reply = Some(self.settlement_pending(&id));
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(503),
                        "settlement outcome unknown",
                    ));
                }
                Err(e) => {
                    log::info!("payment {id} not settled before it expires: {e}");
                    self.release(ctx, Release::Withdrawn);
                    ctx.failure = Some(
                        "the payment could not be settled before its authorization expires; nothing was charged",
                    );
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(402),
                        "authorization expiring",
                    ));
                }
            }
        } else if let Err(e) = settlement.accept(record, hold, durability).await {
            log::error!("cannot journal payment {id}: {e}");
            self.release(ctx, Release::Withdrawn);
            ctx.failure = Some("cannot record the payment; nothing was charged");
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "journal write failed",
            ));
        }
        Ok(())
    }
}

impl LevyProxy {
    /// Fixes a metered response's charge once it ended (completely, cut by the origin, or
    /// by the client: what was flushed to it), and journals it: a charge above zero is
    /// queued for a batch, zero is journaled `void` and sends no transaction. Either way the
    /// Permit2 nonce stays used.
    /// What a metered response that has ended delivered, in units and in atomic units
    /// charged, counted in the route's metrics.
    pub(super) fn metered_charge(
        &self,
        session: &Session,
        e: Option<&Error>,
        ctx: &RequestCtx,
        metering: &Metering,
    ) -> (u64, alloy_primitives::U256) {
        let origin_failed = e.is_some_and(|e| e.esource() == &ErrorSource::Upstream);
        let ending = metering.ending(origin_failed);
        let (units, amount) = metering.charge(ending, session.body_bytes_sent() as u64);
        let route = ctx.route_label();
        metrics()
            .metered_units
            .with_label_values(&[route, metering.unit_name()])
            .inc_by(units);
        if !amount.is_zero() {
            metrics()
                .metered_amount
                .with_label_values(&[route])
                .inc_by(u64::try_from(amount).unwrap_or(u64::MAX));
        }
        (units, amount)
    }

    pub(super) async fn finish_metering(
        &self,
        session: &Session,
        e: Option<&Error>,
        ctx: &mut RequestCtx,
    ) {
        let Some(mut paid) = ctx.take_metering() else {
            return;
        };
        let Some(mut metering) = paid.metering.take() else {
            return;
        };
        let (units, amount) = self.metered_charge(session, e, ctx, &metering);
        let route = ctx.route_label().to_owned();
        let mut record = paid.record(&route);
        record.amount = amount;
        let mut hold = paid.hold.take();
        if let Some(hold) = hold.as_mut() {
            hold.shrink_to(amount);
        }
        if let (Some(settlement), Some(ticket)) = (&self.settlement, metering.take_stream()) {
            match settlement.close_stream(ticket, record, hold).await {
                Ok(StreamClose::Charged) => {}
                Ok(StreamClose::AlreadyTaken) => {
                    log::debug!("metered payment {}: charged at its cut-off", paid.id);
                }
                Err(e) => log::error!(
                    "cannot journal metered payment {} ({amount} charged): {e}",
                    paid.id
                ),
            }
        }
        log::debug!(
            "metered payment {} on route {route}: {units} units, {amount} charged",
            paid.id
        );
        ctx.charge(self.nonces.as_ref(), paid, amount);
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
