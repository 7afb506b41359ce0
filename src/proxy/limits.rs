//! Free tiers and rate limits on the request path: a request without a payment on a
//! route with `free_tier` draws on its client address's allowance; a fresh payment on a
//! route with `rate_limit` on its payer's. Counted in this process's buckets, or in Redis
//! when state is shared.

use std::net::IpAddr;

use pingora::proxy::Session;

use super::answer::Answer;
use super::ctx::RequestCtx;
use super::LevyProxy;
use crate::config::Access;
use crate::limits::{Allowance, Take};

impl LevyProxy {
    /// A request without a payment on a route with a free tier: forwarded while its client
    /// address has calls left (`Ok`), else the route's 402 saying the allowance is used.
    /// When the count cannot be kept (no address, Redis unreachable) the request pays.
    pub(super) async fn draw_free_call(
        &self,
        session: &Session,
        ctx: &RequestCtx,
    ) -> Result<(), Answer> {
        let used = Answer::undrawn("the free calls of this address are used up; pay to go on");
        let (Some(route), Some(client)) = (
            ctx.route.as_deref(),
            super::client_ip(session, &ctx.live.config),
        ) else {
            return Err(used);
        };
        let Access::Priced(paywall) = &route.access else {
            return Err(used);
        };
        let Some(allowance) = paywall.free_tier else {
            return Err(used);
        };
        match self
            .counted(
                &route.name,
                "free_tier",
                &free_key(&route.name, client),
                allowance,
            )
            .await
        {
            Some(Take::Taken) => Ok(()),
            Some(Take::Empty { .. }) | None => Err(used),
        }
    }

    /// A fresh payment on a route with a rate limit: `Err` (429 with `Retry-After`, the
    /// payment withdrawn, so it may be sent again) when its payer has no calls left. When
    /// the count cannot be kept, the payment passes: levy's trouble is not the payer's.
    pub(super) async fn within_rate_limit(&self, ctx: &RequestCtx) -> Result<(), Answer> {
        let (Some(route), Some(paid)) = (ctx.route.as_deref(), ctx.reserved()) else {
            return Ok(());
        };
        let Access::Priced(paywall) = &route.access else {
            return Ok(());
        };
        let Some(allowance) = paywall.payer_limit else {
            return Ok(());
        };
        let key = format!("payer:{}:{:#x}", route.name, paid.verified.payer);
        match self.counted(&route.name, "payer", &key, allowance).await {
            Some(Take::Empty { retry_after }) => Err(Answer::Limited {
                text: "this payer's calls on this route are used up for now; retry later with the same payment",
                retry_after,
            }),
            Some(Take::Taken) | None => Ok(()),
        }
    }

    /// A request let in by an API key on an entry with a rate limit: `Err` (429 with
    /// `Retry-After`) when the key has no calls left. When the count cannot be kept, it
    /// passes.
    pub(super) async fn within_key_limit(&self, ctx: &RequestCtx) -> Result<(), Answer> {
        let (Some(route), Some(id)) = (ctx.route.as_deref(), ctx.key_id.as_deref()) else {
            return Ok(());
        };
        let Some(allowance) = route.key_limit else {
            return Ok(());
        };
        match self
            .take(&format!("key:{}:{id}", route.name), allowance)
            .await
        {
            Some(Take::Empty { retry_after }) => Err(Answer::Limited {
                text: "this API key's calls on this route are used up for now; retry later",
                retry_after,
            }),
            Some(Take::Taken) | None => Ok(()),
        }
    }

    /// [`Self::take`], counted in `levy_allowance_total` under `route` and `kind`.
    async fn counted(
        &self,
        route: &str,
        kind: &str,
        key: &str,
        allowance: Allowance,
    ) -> Option<Take> {
        let take = self.take(key, allowance).await;
        let outcome = match take {
            Some(Take::Taken) => "taken",
            Some(Take::Empty { .. }) => "used_up",
            None => "uncounted",
        };
        crate::metrics::metrics()
            .allowance
            .with_label_values(&[route, kind, outcome])
            .inc();
        take
    }

    /// Takes a token from `key`'s bucket; `None` when Redis cannot be asked.
    async fn take(&self, key: &str, allowance: Allowance) -> Option<Take> {
        match &self.shared {
            Some(shared) => match shared.take_token(key, allowance).await {
                Ok(take) => Some(take),
                Err(why) => {
                    log::warn!("cannot count an allowance in Redis: {why}");
                    None
                }
            },
            None => Some(self.buckets.take(key, allowance, crate::clock::unix_ms())),
        }
    }
}

/// The bucket of `client`'s free calls on `route`.
fn free_key(route: &str, client: IpAddr) -> String {
    format!("free:{route}:{client}")
}
