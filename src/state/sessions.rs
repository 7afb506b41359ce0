//! Shared bundles on Redis: per payer and route a hash (`bought`, `used`, `expires_at`,
//! `purchases`) and a sorted set of the calls admitted and not finished (token → when its
//! place lapses, Unix ms), and per payer the spent proof nonces (`SET PX`, kept as long as
//! a proof could be valid); all under the payer's hash tag `{<payer>}`, so one script sees
//! them together on any Cluster node. The issuer's secret is one key every replica reads.

use std::time::Duration;

use alloy_primitives::{Address, B256};
use redis::Script;

use super::{set_once, Shared, StateError};
use crate::session::{Bundle, Exhausted, Quota, MAX_AGE_MS};
use crate::settle::sessions::shared::SharedSessions;
use crate::settle::sessions::{Draw, DrawRefusal};
use crate::settle::Unavailable;

/// Returns the bundle's fields, as strings, in [`fields`]'s order.
const FIELDS: &str = r"
local function fields()
  local b = redis.call('HMGET', KEYS[1], 'bought', 'used', 'expires_at', 'purchases')
  for i = 1, 4 do b[i] = b[i] or '0' end
  return b
end
";

/// Folds a replica's logged bundle (`ARGV`: bought, used, expires_at, purchases) into
/// `KEYS[1]` after Redis lost it: each field only grows.
const RESTORE: &str = r"
local names = {'bought', 'used', 'expires_at', 'purchases'}
local now = fields()
for i = 1, 4 do
  if tonumber(ARGV[i]) > tonumber(now[i]) then redis.call('HSET', KEYS[1], names[i], ARGV[i]) end
end
return 0
";

/// A purchase of `ARGV[2]` (`ARGV[1]`: calls, bytes or seconds) at `ARGV[3]` (Unix s).
const GRANT: &str = r"
redis.call('HINCRBY', KEYS[1], 'purchases', 1)
if ARGV[1] == 'seconds' then
  local now, exp = tonumber(ARGV[3]), tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '0')
  redis.call('HSET', KEYS[1], 'expires_at', math.max(exp, now) + tonumber(ARGV[2]))
else
  redis.call('HINCRBY', KEYS[1], 'bought', ARGV[2])
end
return fields()
";

/// Takes one purchase of `ARGV[2]` `ARGV[1]` back from bundle `KEYS[1]` (never below zero).
const REVOKE: &str = r"
local function take(field, n)
  local left = tonumber(redis.call('HGET', KEYS[1], field) or '0') - n
  redis.call('HSET', KEYS[1], field, math.max(left, 0))
end
take('purchases', 1)
if ARGV[1] == 'seconds' then take('expires_at', tonumber(ARGV[2])) else take('bought', tonumber(ARGV[2])) end
return fields()
";

/// Spends nonce key `KEYS[3]` and admits token `ARGV[3]` into `KEYS[2]` at `ARGV[2]` (Unix
/// ms) for `ARGV[4]` ms on a bundle of `ARGV[1]`, or answers `replayed`, `used_up`,
/// `expired` or `in_use` (a bytes bundle with a call in flight); the nonce is kept `ARGV[5]`
/// ms.
const DRAW: &str = r"
if redis.call('EXISTS', KEYS[3]) == 1 then return {'replayed'} end
local now = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local b = fields()
local bought, used, exp = tonumber(b[1]), tonumber(b[2]), tonumber(b[3])
if ARGV[1] == 'calls' and used + redis.call('ZCARD', KEYS[2]) >= bought then return {'used_up'} end
if ARGV[1] == 'bytes' and used >= bought then return {'used_up'} end
if ARGV[1] == 'bytes' and redis.call('ZCARD', KEYS[2]) > 0 then return {'in_use'} end
if ARGV[1] == 'seconds' and math.floor(now / 1000) >= exp then return {'expired'} end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[5])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
return b
";

/// Ends token `ARGV[1]`'s call (its place, if it has not lapsed), debiting `ARGV[2]`.
const FINISH: &str = r"
redis.call('ZREM', KEYS[2], ARGV[1])
if tonumber(ARGV[2]) > 0 then redis.call('HINCRBY', KEYS[1], 'used', ARGV[2]) end
return fields()
";

struct Scripts {
    grant: Script,
    revoke: Script,
    restore: Script,
    draw: Script,
    finish: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| {
        let with = |body: &str| Script::new(&format!("{FIELDS}{body}"));
        Scripts {
            grant: with(GRANT),
            revoke: with(REVOKE),
            restore: with(RESTORE),
            draw: with(DRAW),
            finish: with(FINISH),
        }
    })
}

impl Shared {
    /// `payer`'s bundle key and in-flight key on `route`.
    fn bundle_keys(&self, payer: Address, route: &str) -> Vec<String> {
        let base = format!("{}{{{payer:#x}}}:", self.inner.spec.key_prefix);
        vec![
            format!("{base}bundle:{route}"),
            format!("{base}drawing:{route}"),
        ]
    }

    /// Puts what this replica's bundle log says of a bundle back into a Redis that lost it,
    /// on connection `conn` at start (folded into what another replica republished).
    pub(super) async fn restore_bundle(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        logged: &Bundle,
    ) -> redis::RedisResult<()> {
        let keys = self.bundle_keys(logged.payer, &logged.route);
        scripts()
            .restore
            .key(&keys[0])
            .arg(logged.bought)
            .arg(logged.used)
            .arg(logged.expires_at)
            .arg(logged.purchases)
            .invoke_async::<i64>(conn)
            .await
            .map(|_| ())
    }

    /// The secret every replica keys challenge nonces with: `mine`, unless a replica set
    /// one first (asked once, at start).
    pub fn issuer_secret(&self, mine: B256) -> Result<B256, StateError> {
        let key = format!("{}siwx-secret", self.inner.spec.key_prefix);
        let got = set_once(&self.inner.client, &self.inner.spec, key, mine.to_string())?;
        got.parse().map_err(|_| StateError::Unreachable {
            url: super::redacted(&self.inner.spec.url),
            reason: "its challenge secret is not 32 bytes of hex".into(),
        })
    }
}

/// The unit a script is told a quota is in.
fn unit(quota: Quota) -> (&'static str, u64) {
    match quota {
        Quota::Calls(n) => ("calls", n),
        Quota::Bytes(n) => ("bytes", n),
        Quota::Seconds(n) => ("seconds", n),
    }
}

/// `payer`'s bundle on `route` from a script's four fields.
fn bundle(payer: Address, route: &str, fields: &[String]) -> Result<Bundle, Unavailable> {
    let number = |i: usize| -> Result<u64, Unavailable> {
        let text = fields.get(i).ok_or("a bundle field is missing")?;
        text.parse()
            .map_err(|_| format!("a shared bundle field is `{text}`").into())
    };
    Ok(Bundle {
        payer,
        route: route.to_owned(),
        bought: number(0)?,
        used: number(1)?,
        expires_at: number(2)?,
        purchases: number(3)?,
    })
}

#[async_trait::async_trait]
impl SharedSessions for Shared {
    fn replica(&self) -> &str {
        &self.inner.spec.replica
    }

    async fn grant(
        &self,
        payer: Address,
        route: &str,
        quota: Quota,
        now: u64,
    ) -> Result<Bundle, Unavailable> {
        let (unit, amount) = unit(quota);
        let args = vec![unit.to_owned(), amount.to_string(), now.to_string()];
        let fields: Vec<String> = self
            .script(&scripts().grant, self.bundle_keys(payer, route), args)
            .await?;
        bundle(payer, route, &fields)
    }

    async fn revoke(
        &self,
        payer: Address,
        route: &str,
        quota: Quota,
    ) -> Result<Bundle, Unavailable> {
        let (unit, amount) = unit(quota);
        let args = vec![unit.to_owned(), amount.to_string()];
        let fields: Vec<String> = self
            .script(&scripts().revoke, self.bundle_keys(payer, route), args)
            .await?;
        bundle(payer, route, &fields)
    }

    async fn denied(&self, payer: Address) -> Result<Option<String>, Unavailable> {
        let key = super::deny_key(&self.inner.spec.key_prefix, payer);
        self.run(
            |mut conn, _| async move { redis::cmd("GET").arg(key).query_async(&mut conn).await },
        )
        .await
    }

    async fn draw(
        &self,
        draw: &Draw,
        nonce: &str,
        now_ms: u64,
        hold: Duration,
    ) -> Result<Result<Bundle, DrawRefusal>, Unavailable> {
        let token = draw.token.clone().ok_or("a shared draw without a token")?;
        let mut keys = self.bundle_keys(draw.payer, &draw.route);
        keys.push(format!(
            "{}{{{:#x}}}:siwx:{nonce}",
            self.inner.spec.key_prefix, draw.payer
        ));
        let args = vec![
            unit(draw.quota).0.to_owned(),
            now_ms.to_string(),
            token,
            hold.as_millis().to_string(),
            (2 * MAX_AGE_MS).to_string(),
        ];
        let got: Vec<String> = self.script(&scripts().draw, keys, args).await?;
        Ok(match got.first().map(String::as_str) {
            Some("replayed") => Err(DrawRefusal::Replayed),
            Some("used_up") => Err(DrawRefusal::Exhausted(Exhausted::UsedUp)),
            Some("expired") => Err(DrawRefusal::Exhausted(Exhausted::Expired)),
            Some("in_use") => Err(DrawRefusal::Exhausted(Exhausted::InUse)),
            _ => Ok(bundle(draw.payer, &draw.route, &got)?),
        })
    }

    async fn finish(&self, draw: &Draw, used: u64) -> Result<Bundle, Unavailable> {
        let token = draw.token.clone().ok_or("a shared draw without a token")?;
        let fields: Vec<String> = self
            .script(
                &scripts().finish,
                self.bundle_keys(draw.payer, &draw.route),
                vec![token, used.to_string()],
            )
            .await?;
        bundle(draw.payer, &draw.route, &fields)
    }
}
