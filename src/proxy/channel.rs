//! Channel payments (`batch-settlement`) through the request's phases: the inline checks
//! when the header arrives, the lease (and a deposit) before forwarding, and on the origin's
//! answer the charge (journaled before the response leaves, with the `PAYMENT-RESPONSE`
//! the official client keeps its ledger by) or the release. A cooperative refund is
//! answered by levy itself, once the refund is on chain; it never reaches the origin.

use std::time::Duration;

use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

use super::answer::{Answer, Form};
use super::ctx::RequestCtx;
use super::headers::make_private;
use super::outcome::Outcome;
use super::respond::Reply;
use super::tender::ChannelStep;
use super::LevyProxy;
use crate::channel::{self, ChannelError, Checked, Offer};
use crate::clock::unix_now;
use crate::config::Paywall;
use crate::settle::channels::{Refunded, Refusal};

use super::metering::Metering;
use crate::offers::OFFER_RECEIPT;
use crate::x402::{self, SettleResponse, PAYMENT_RESPONSE};

impl LevyProxy {
    /// Takes a payment header for a channel payment when the route sells through channels
    /// and the payload names the scheme: `Some(Ok)` checked, `Some(Err)` the 402 to answer,
    /// `None` not a channel payment.
    pub(super) fn check_channel_payment(
        &self,
        header: &[u8],
        paywall: &Paywall,
        ctx: &mut RequestCtx,
    ) -> Option<Result<(), ChannelError>> {
        if !paywall.offers_channels() || header.len() > crate::verify::MAX_HEADER_BYTES {
            return None;
        }
        let json = x402::decode_header(header)?;
        if !channel::names_scheme(&json) {
            return None;
        }
        let checked = channel::decode(&json).and_then(|payment| {
            let index = crate::verify::match_v2(&payment.accepted, paywall.challenge.accepts_v2())
                .map_err(|_| ChannelError::Malformed("accepted"))?;
            let offer = paywall
                .requirements
                .get(index)
                .and_then(Offer::of)
                .ok_or(ChannelError::Malformed("accepted"))?;
            let checked = channel::check(&payment.payload, &offer, unix_now())?;
            Ok((checked, index))
        });
        Some(checked.map(|(checked, index)| {
            ctx.tender.channel = ChannelStep::Checked {
                checked: Box::new(checked),
                index,
            };
        }))
    }

    /// Leases the checked channel payment's channel (depositing first when asked to), or
    /// answers a refund once it is on chain.
    pub(super) async fn lease_channel(
        &self,
        paywall: &Paywall,
        ctx: &mut RequestCtx,
    ) -> Result<(), Answer> {
        let ChannelStep::Checked { checked, index } = std::mem::take(&mut ctx.tender.channel)
        else {
            return Ok(());
        };
        let Some(channels) = self.channels.as_ref() else {
            return Err(Answer::Own(
                Reply::text(503, "channels are not configured"),
                Outcome::InternalError,
            ));
        };
        let Some((requirement, offer)) = paywall
            .requirements
            .get(index)
            .and_then(|r| Some((r, Offer::of(r)?)))
        else {
            // Checked against this requirement inline: not reached.
            return Err(Answer::refused(
                ChannelError::Malformed("accepted").reason(),
            ));
        };
        let hold = Duration::from_secs(requirement.max_timeout_seconds.clamp(5, 600));
        let metering = Metering::for_requirement(paywall, index)
            .or_else(|| ctx.mcp_metering(requirement.amount))
            .map(Box::new);
        if let Checked::Refund(voucher, amount) = *checked {
            let refunded = channels
                .refund(&voucher, amount, &requirement.network_name, hold)
                .await;
            return Err(match refunded {
                Ok(done) => {
                    Answer::Own(refund_reply(&done, &requirement.network), Outcome::Refunded)
                }
                Err(refusal) => refused(ctx, index, refusal),
            });
        }
        match channels
            .lease(
                *checked,
                &offer,
                &requirement.network_name,
                hold,
                metering.is_some(),
            )
            .await
        {
            Ok(lease) => {
                if let Some(m) = Self::metrics_of(ctx) {
                    m.payments_verified.inc();
                }
                ctx.tender.channel = ChannelStep::Leased {
                    lease: Box::new(lease),
                    network: requirement.network.clone(),
                    metering,
                };
                Ok(())
            }
            Err(refusal) => Err(refused(ctx, index, refusal)),
        }
    }

    /// On the origin's answer: below 400 the channel is charged (in the channel log before
    /// this returns) and the response says so; otherwise it is released. A metered call is
    /// charged its ceiling on the protocol's ledger (what the response says, so the client's
    /// next voucher is in step) and earns what it delivers when it ends.
    pub(super) async fn settle_channel(
        &self,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let ChannelStep::Leased {
            lease,
            network,
            metering,
        } = std::mem::take(&mut ctx.tender.channel)
        else {
            return Ok(());
        };
        let Some(channels) = self.channels.as_ref() else {
            return Ok(());
        };
        if response.status.as_u16() >= 400 {
            channels.release_now(&lease).await;
            ctx.tender.end(Outcome::PaymentReleased);
            crate::metrics::metrics()
                .payments_released
                .with_label_values(&[ctx.route_label()])
                .inc();
            return Ok(());
        }
        let ledger = match channels.commit(&lease).await {
            Ok(ledger) => ledger,
            Err(e) => {
                log::error!("cannot record a channel voucher: {e}");
                ctx.failure = Some("cannot record the payment; nothing was charged");
                return Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "channel log write failed",
                ));
            }
        };
        if let Some(audit) = self.audit() {
            audit.write(crate::settle::channels::audit_entry(
                crate::alerts::Event::Voucher,
                &ledger,
                ctx.route_label(),
                lease.price,
                None,
            ));
        }
        let payer = lease.voucher.config.payer;
        let signed = ctx.receipt_on(payer, &network, None);
        let receipt = SettleResponse {
            success: true,
            transaction: String::new(),
            network,
            payer: payer.to_checksum(None),
            amount: Some(lease.price.to_string()),
            extensions: signed.map(|signed| serde_json::json!({ OFFER_RECEIPT: signed })),
            extra: Some(serde_json::json!({
                "chargedAmount": lease.price.to_string(),
                "channelState": ledger.state_json(),
            })),
        };
        ctx.keep_mcp_channel_receipt(&receipt);
        let encoded = receipt.header_value();
        response.insert_header(PAYMENT_RESPONSE, encoded)?;
        make_private(response)?;
        ctx.tender.end(Outcome::Paid);
        if let Some(m) = Self::metrics_of(ctx) {
            m.payments_charged.inc();
        }
        if let Some(mut metering) = metering {
            metering.on_headers(response);
            ctx.tender.channel = ChannelStep::Metering {
                channel_id: lease.voucher.channel_id,
                ceiling: lease.price,
                token: lease.token().map(str::to_owned),
                metering,
            };
        }
        Ok(())
    }

    /// Once a metered channel call's response has ended: what it delivered is earned (in the
    /// channel log before this returns); the rest of its ceiling stays the payer's.
    pub(super) async fn finish_channel_metering(
        &self,
        session: &Session,
        e: Option<&Error>,
        ctx: &mut RequestCtx,
    ) {
        let ChannelStep::Metering {
            channel_id,
            ceiling,
            token,
            metering,
        } = std::mem::take(&mut ctx.tender.channel)
        else {
            return;
        };
        let Some(channels) = self.channels.as_ref() else {
            return;
        };
        let (units, amount) = self.metered_charge(session, e, ctx, &metering);
        let amount = u128::try_from(amount).unwrap_or(u128::MAX);
        if let Err(e) = channels
            .earn(channel_id, amount, ceiling, token.as_deref())
            .await
        {
            log::error!("cannot record channel {channel_id} earning {amount}: {e}");
        }
        log::debug!(
            "metered channel call on {}: {units} units, {amount} earned",
            ctx.route_label()
        );
    }
}

/// The answer to a refused channel payment (or refund) on the requirement at `index`.
fn refused(ctx: &RequestCtx, index: usize, refusal: Refusal) -> Answer {
    match refusal {
        Refusal::Rejected(e) => {
            log::debug!("channel payment refused on {}: {e}", ctx.route_label());
            Answer::refused(e.reason())
        }
        Refusal::Corrective(e, ledger) => {
            let mut extra = serde_json::Map::new();
            extra.insert("channelState".into(), ledger.state_json());
            if let Some(voucher) = ledger.voucher_json() {
                extra.insert("voucherState".into(), voucher);
            }
            Answer::Refused(e.reason(), Form::Corrective(index, extra))
        }
        Refusal::Unavailable(why) => {
            log::warn!("channel payment on {}: {why}", ctx.route_label());
            Answer::retry("cannot read the channel now; retry later", "2")
        }
    }
}

/// levy's own 200 for a refund that landed: its `PAYMENT-RESPONSE` names the transaction,
/// the amount returned and the channel's state after it (the official client drops or
/// shrinks its channel record by it).
fn refund_reply(done: &Refunded, network: &str) -> Reply {
    let receipt = SettleResponse {
        success: true,
        transaction: done.transaction.to_string(),
        network: network.to_owned(),
        payer: done.ledger.config.payer.to_checksum(None),
        amount: Some(done.amount.to_string()),
        extensions: None,
        extra: Some(serde_json::json!({"channelState": done.ledger.state_json()})),
    };
    let body = serde_json::json!({
        "channelId": done.ledger.channel_id.to_string(),
        "refunded": done.amount.to_string(),
        "transaction": done.transaction.to_string(),
    });
    Reply::new(200, "application/json", body.to_string())
        .header(
            http::HeaderName::from_static(PAYMENT_RESPONSE),
            receipt.header_value(),
        )
        .header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .header(
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            super::CORS_EXPOSE,
        )
}
