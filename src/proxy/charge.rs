//! Charging on the origin's answer: a reserved payment charged (journaled before the
//! response leaves, with its `PAYMENT-RESPONSE`) or released, a metered one opened as a
//! stream, and a metered response's charge fixed when it ends.

use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

use super::answer::settlement_pending;
use super::ctx::{RequestCtx, STATUS_PATH};
use super::headers::make_private;
use super::metering::Metering;
use super::tender::{ChannelStep, Paid, Release};
use super::LevyProxy;
use crate::clock::unix_now;
use crate::config::Access;
use crate::metrics::metrics;
use crate::offers::OFFER_RECEIPT;
use crate::settle::{SettleError, StreamClose, StreamTicket};
use crate::verify::Version;
use crate::x402::{SettleResponse, PAYMENT_RESPONSE, X_PAYMENT_RESPONSE};

impl LevyProxy {
    /// Decides the fate of a reserved payment once the upstream's status is known: below 400
    /// the payment is charged and the response carries the settlement header; 400 and above
    /// (as the reference servers do) it is released, so the client may retry with it. A
    /// metered payment starts counting instead; it is charged when the response ends.
    pub(super) async fn settle_payment(
        &self,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if matches!(ctx.tender.channel, ChannelStep::Leased { .. }) {
            return self.settle_channel(response, ctx).await;
        }
        if response.status.as_u16() >= 400 && ctx.reserved().is_some() {
            ctx.release(Release::Declined);
            return Ok(());
        }
        if let (Some(settlement), Some(paid)) = (&self.settlement, ctx.reserved_mut()) {
            if paid.metering.as_ref().is_some_and(Metering::is_tool_call)
                && too_late_for_a_batch(settlement, paid)
            {
                // An MCP call too close to its deadline to wait for its answer and a batch
                // is charged whole now, as any such payment is (settled before its
                // response leaves), whatever the answer.
                paid.metering = None;
            }
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
                // What it will be charged is known when the response ends; the header says
                // which payment it is, where its settlement will show, and (when levy signs
                // receipts) that the payer paid for this resource.
                // An MCP call's charge is its price or nothing: pending once it is served.
                let status = if ctx.mcp.is_some() {
                    "pending"
                } else {
                    "metering"
                };
                let levy_ext = self.levy_extension(ctx, &paid.id, status);
                let receipt = self.payment_response(ctx, &paid, levy_ext, None);
                ctx.keep_mcp_receipt(&receipt);
                response.insert_header(PAYMENT_RESPONSE, receipt.header_value())?;
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
        let levy_ext = self.levy_extension(ctx, &paid.id, status);
        let transaction = upfront.map(|h| h.to_string());
        let receipt = self.payment_response(ctx, &paid, levy_ext, transaction);
        ctx.keep_mcp_receipt(&receipt);
        let encoded = receipt.header_value();
        let name = match paid.verified.version {
            Version::V2 => PAYMENT_RESPONSE,
            Version::V1 => X_PAYMENT_RESPONSE,
        };
        if let Some(id) = &paid.verified.retry_id {
            ctx.tender.holders.retries.complete(
                id,
                crate::retry::Served {
                    header: name,
                    value: encoded.clone(),
                    payer: paid.verified.payer,
                    amount: paid.verified.amount,
                    payment_id: paid.id.clone(),
                    body: super::retry::BodyWatch::paid_body(ctx.body_watch.as_ref()),
                },
            );
        }
        response.insert_header(name, encoded)?;
        make_private(response)?;
        let (amount, payer) = (paid.verified.amount, paid.verified.payer);
        ctx.charge(paid, amount);
        self.grant_bundle(response, ctx, payer).await?;
        Ok(())
    }

    /// levy's own `extensions.levy` of a payment's response: its id, where it stands and,
    /// when levy settles, the URL that shows its settlement.
    fn levy_extension(&self, ctx: &RequestCtx, id: &str, status: &str) -> serde_json::Value {
        let mut levy_ext = serde_json::json!({"paymentId": id, "status": status});
        if self.settlement.is_some() {
            let base = ctx.live.config.public_url.as_deref().unwrap_or("");
            levy_ext["statusUrl"] = serde_json::Value::String(format!("{base}{STATUS_PATH}{id}"));
        }
        levy_ext
    }

    /// The `PAYMENT-RESPONSE` of a served payment: levy's extension and, when levy signs
    /// receipts, the signed receipt; `transaction` once the payment is on chain.
    fn payment_response(
        &self,
        ctx: &RequestCtx,
        paid: &super::tender::Paid,
        levy_ext: serde_json::Value,
        transaction: Option<String>,
    ) -> SettleResponse {
        let mut extensions = serde_json::json!({ "levy": levy_ext });
        if let Some(signed) = ctx.receipt(
            paid.verified.payer,
            paid.verified.requirement,
            transaction.as_deref(),
        ) {
            extensions[OFFER_RECEIPT] = signed;
        }
        SettleResponse {
            success: true,
            transaction: transaction.unwrap_or_default(),
            network: paid.network.clone(),
            payer: paid.verified.payer.to_checksum(None),
            amount: None,
            extensions: Some(extensions),
            extra: None,
        }
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
                ctx.release(Release::Withdrawn);
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
        let expiring = too_late_for_a_batch(settlement, paid);
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
                    ctx.failure_reply = Some(settlement_pending(&ctx.live.config, &id));
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(503),
                        "settlement outcome unknown",
                    ));
                }
                Err(e) => {
                    log::info!("payment {id} not settled before it expires: {e}");
                    ctx.release(Release::Withdrawn);
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
            ctx.release(Release::Withdrawn);
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
        ctx.charge(paid, amount);
    }
}

/// Whether a payment's authorization ends before a batch could settle it (its
/// `validBefore` within the settlement window): it must be settled before its response.
fn too_late_for_a_batch(settlement: &crate::settle::Settlement, paid: &Paid) -> bool {
    paid.verified.valid_before < unix_now() + settlement.settle_window_seconds()
}
