//! Bundle routes in the proxy: a `SIGN-IN-WITH-X` proof draws a call on the payer's bundle
//! (checked inline, the nonce spent and the call admitted atomically), the served call is
//! debited before its response leaves (bytes once the body has gone), and a charged
//! payment on the route buys the payer a bundle. Every 402 of the route carries a fresh
//! `sign-in-with-x` challenge.

use http::header::HeaderName;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::answer::Answer;
use super::tender::{Proving, SessionStep, Ticket};
use super::{LevyProxy, RequestCtx};
use crate::clock::{unix_ms, unix_now};
use crate::config::{Config, Paywall};
use crate::session::{
    self, Bundle, Exhausted, Expected, ProofError, ProofSigner, Quota, SIGN_IN_WITH_X,
};
use crate::settle::sessions::{DrawRefusal, Sessions};
use crate::settle::{AdmissionPort, Settlement, SignatureCheck};

pub(super) const SIGN_IN_WITH_X_HEADER: HeaderName = HeaderName::from_static(SIGN_IN_WITH_X);
/// What is left of the payer's bundle after this call (calls, bytes or seconds).
const BUNDLE_REMAINING: HeaderName = HeaderName::from_static("x-levy-bundle-remaining");

/// Why a proof draws nothing.
enum Undrawn {
    /// A 402 with this reason.
    Refused(&'static str),
    /// The shared bundle state cannot be reached: 503, retry.
    Unavailable,
    /// A call on the payer's bytes bundle is in flight: 429, retry when it ends (a 402
    /// would have the client buy another bundle).
    InUse,
}

/// The chains a route takes payment on, which proofs may name.
fn chain_ids(paywall: &Paywall) -> Vec<u64> {
    let mut ids: Vec<u64> = paywall.requirements.iter().map(|r| r.chain_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

impl LevyProxy {
    fn sessions(&self) -> Option<&Sessions> {
        self.sessions.as_ref()
    }

    /// A bundle route's fresh `sign-in-with-x` declaration, for its challenge.
    pub(super) fn bundle_declaration(
        &self,
        session: &Session,
        config: &Config,
        paywall: &Paywall,
    ) -> Option<(&'static str, String)> {
        paywall.bundle?;
        let sessions = self.sessions()?;
        let url = self.request_url(session, config);
        let chains = chain_ids(paywall);
        let declaration = sessions.issuer().declaration(
            &Expected {
                scope: &url,
                resource_url: &url,
                chain_ids: &chains,
            },
            unix_ms(),
        );
        Some((SIGN_IN_WITH_X, declaration.to_string()))
    }

    /// On a bundle route, a request with a `SIGN-IN-WITH-X` proof and no payment draws on
    /// the payer's bundle: `Some(Ok)` the proof is good and draws in
    /// [`LevyProxy::admit_proof`] (a contract wallet's once the chain judged its
    /// signature), `Some(Err(why))` for the 402, `None` when there is no proof to look at.
    pub(super) fn draw_on_bundle(
        &self,
        session: &Session,
        paywall: &Paywall,
        ctx: &mut RequestCtx,
    ) -> Option<Result<(), ProofError>> {
        let quota = paywall.bundle?;
        let header = session.req_header().headers.get(SIGN_IN_WITH_X_HEADER)?;
        let sessions = self.sessions()?;
        let route = ctx.route.as_ref()?.name.clone();
        let live = std::sync::Arc::clone(&ctx.live);
        let config = &live.config;
        let checked = (|| {
            let proof = session::decode(header.as_bytes())?;
            let url = self.request_url(session, config);
            let chains = chain_ids(paywall);
            let expected = Expected {
                scope: &url,
                resource_url: &url,
                chain_ids: &chains,
            };
            let signer = sessions.issuer().check(&proof, &expected, unix_ms())?;
            Ok((signer, proof.nonce))
        })();
        let (signer, nonce) = match checked {
            Ok(checked) => checked,
            Err(reason) => return Some(Err(reason)),
        };
        let network = match signer {
            ProofSigner::Eoa(_) => None,
            ProofSigner::Contract { chain_id, .. } => {
                // Only levy's own RPC can judge it; it does so before the request goes on.
                let network = paywall
                    .requirements
                    .iter()
                    .find(|r| r.chain_id == chain_id)
                    .map(|r| r.network_name.clone());
                let Some(network) = network.filter(|_| config.policy.contract_signatures) else {
                    return Some(Err(ProofError::Signature));
                };
                Some(network)
            }
        };
        ctx.tender.session = SessionStep::Proving(Box::new(Proving {
            signer,
            network,
            ticket: Ticket {
                route,
                quota,
                nonce,
            },
        }));
        Some(Ok(()))
    }

    /// Draws on `payer`'s bundle as `ticket` asks (its nonce spent atomically with it).
    async fn admit_draw(
        settlement: &Settlement,
        sessions: &Sessions,
        payer: alloy_primitives::Address,
        ticket: &Ticket,
        ctx: &mut RequestCtx,
    ) -> Result<(), Undrawn> {
        if let Some(reason) = settlement.denied(payer) {
            // A payer whose payment failed to settle draws nothing meanwhile.
            return Err(Undrawn::Refused(reason));
        }
        if sessions.denied_elsewhere(payer).await.is_some() {
            // Nor on a replica that has not seen the failure itself.
            return Err(Undrawn::Refused("payer_denied"));
        }
        let draw = sessions
            .draw(payer, &ticket.route, ticket.quota, &ticket.nonce, unix_ms())
            .await
            .map_err(|e| match e {
                DrawRefusal::Unavailable => Undrawn::Unavailable,
                DrawRefusal::Exhausted(Exhausted::InUse) => Undrawn::InUse,
                e => Undrawn::Refused(e.reason()),
            })?;
        ctx.tender.session = SessionStep::Drawing {
            draw: Box::new(draw),
            served: false,
            bytes: 0,
        };
        Ok(())
    }

    /// Before forwarding a proof: it draws on its signer's bundle; a contract wallet's only
    /// once the chain judged its signature (EIP-1271, or ERC-6492 for a wallet not deployed
    /// yet).
    pub(super) async fn admit_proof(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), Answer> {
        let SessionStep::Proving(proving) = std::mem::take(&mut ctx.tender.session) else {
            return Ok(());
        };
        let (Some(settlement), Some(sessions)) = (self.settlement.as_ref(), self.sessions()) else {
            return Ok(());
        };
        let bad_signature = || Answer::undrawn(session::ProofError::Signature.reason());
        let client = super::client_ip(session, &ctx.live.config);
        let payer = match (&proving.signer, &proving.network) {
            (ProofSigner::Eoa(payer), _) => *payer,
            (
                ProofSigner::Contract {
                    address,
                    digest,
                    signature,
                    ..
                },
                Some(network),
            ) => match settlement
                .check_signature(network, client, *address, *digest, signature)
                .await
            {
                SignatureCheck::Valid => *address,
                SignatureCheck::Invalid => return Err(bad_signature()),
                unchecked => return Err(Answer::unchecked(unchecked)),
            },
            (ProofSigner::Contract { .. }, None) => return Err(bad_signature()),
        };
        Self::admit_draw(settlement, sessions, payer, &proving.ticket, ctx)
            .await
            .map_err(|undrawn| match undrawn {
                Undrawn::Refused(reason) => Answer::undrawn(reason),
                Undrawn::Unavailable => {
                    Answer::retry("cannot reach the shared bundle state; retry later", "2")
                }
                Undrawn::InUse => {
                    Answer::Busy("a call on this bytes bundle is in flight; retry when it ends")
                }
            })
    }

    /// The origin answered a drawing request: below 400 a calls or seconds bundle is
    /// debited now (in the log before the response leaves); 400 and above lets it go.
    pub(super) async fn answer_draw(
        &self,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let SessionStep::Drawing { draw, served, .. } = &mut ctx.tender.session else {
            return Ok(());
        };
        let Some(sessions) = self.sessions() else {
            return Ok(());
        };
        if response.status.as_u16() >= 400 {
            sessions.cancel(draw);
            ctx.tender.session = SessionStep::None;
            return Ok(());
        }
        if ctx.mcp.is_some() {
            // Debited when the origin's answer says it served the call (see `finish_draw`).
            return Ok(());
        }
        *served = true;
        if matches!(draw.quota, Quota::Bytes(_)) {
            // Debited when the body has gone (see `finish_draw`).
            if let Some(bundle) = sessions.bundle(draw.payer, &draw.route) {
                remaining_header(response, &bundle, draw.quota)?;
            }
            return Ok(());
        }
        let SessionStep::Drawing { draw, .. } = std::mem::take(&mut ctx.tender.session) else {
            return Ok(());
        };
        match sessions.finish(&draw, 0).await {
            Ok(bundle) => {
                self.audit_draw(&draw, 1);
                remaining_header(response, &bundle, draw.quota)?
            }
            Err(e) => log::error!("cannot record a bundle call of {}: {e}", draw.payer),
        }
        Ok(())
    }

    /// The audit line of a call drawn on a bundle: `units` calls or bytes of it.
    fn audit_draw(&self, draw: &crate::settle::sessions::Draw, units: u64) {
        if let Some(audit) = self.audit() {
            audit.write(crate::alerts::Entry {
                event: crate::alerts::Event::Draw,
                id: format!(
                    "draw_{}",
                    alloy_primitives::hex::encode(&alloy_primitives::B256::random()[..12])
                ),
                route: draw.route.clone(),
                network: String::new(),
                payer: draw.payer,
                pay_to: alloy_primitives::Address::ZERO,
                asset: alloy_primitives::Address::ZERO,
                amount: alloy_primitives::U256::ZERO,
                nonce: alloy_primitives::B256::ZERO,
                tx_hash: None,
                reason: None,
                units: Some(units),
            });
        }
    }

    /// Counts body bytes of a drawing request.
    pub(super) fn count_draw_bytes(ctx: &mut RequestCtx, body: Option<&[u8]>) {
        if let SessionStep::Drawing { bytes, .. } = &mut ctx.tender.session {
            *bytes += body.map_or(0, |b| b.len() as u64);
        }
    }

    /// The exchange ended: a served bytes draw is debited what was sent; anything else
    /// still drawing was not served and is let go.
    pub(super) async fn finish_draw(&self, ctx: &mut RequestCtx) {
        let SessionStep::Drawing {
            draw,
            served,
            bytes,
        } = std::mem::take(&mut ctx.tender.session)
        else {
            return;
        };
        let Some(sessions) = self.sessions() else {
            return;
        };
        if served {
            // A calls or seconds bundle's draw ends here only on an MCP route (elsewhere
            // the origin's status debited it): one call.
            let (units, audited) = match draw.quota {
                Quota::Bytes(_) => (bytes, bytes),
                _ => (0, 1),
            };
            match sessions.finish(&draw, units).await {
                Ok(_) => self.audit_draw(&draw, audited),
                Err(e) => log::error!("cannot record {bytes} bundle bytes of {}: {e}", draw.payer),
            }
        } else {
            sessions.cancel(&draw);
        }
    }

    /// A payment was charged on a bundle route: the payer's bundle grows by one purchase
    /// (in the log before the response leaves).
    pub(super) async fn grant_bundle(
        &self,
        response: &mut ResponseHeader,
        ctx: &RequestCtx,
        payer: alloy_primitives::Address,
    ) -> pingora::Result<()> {
        let Some(route) = ctx.route.as_ref() else {
            return Ok(());
        };
        let crate::config::Access::Priced(paywall) = &route.access else {
            return Ok(());
        };
        let (Some(quota), Some(sessions)) = (paywall.bundle, self.sessions()) else {
            return Ok(());
        };
        match sessions.grant(payer, &route.name, quota, unix_now()).await {
            Ok(bundle) => remaining_header(response, &bundle, quota)?,
            Err(e) => log::error!(
                "a bundle bought by {payer} on {} is not in the log: {e}",
                route.name
            ),
        }
        Ok(())
    }
}

fn remaining_header(
    response: &mut ResponseHeader,
    bundle: &Bundle,
    quota: Quota,
) -> pingora::Result<()> {
    response.insert_header(
        BUNDLE_REMAINING,
        format!("{} {}", bundle.remaining(quota, unix_now()), quota.unit()),
    )?;
    Ok(())
}
