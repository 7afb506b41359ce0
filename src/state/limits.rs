//! Free tiers and rate limits across replicas: one token bucket per key in Redis
//! (`<prefix>bucket:<key>`), refilled and taken in one script by Redis's own clock, so
//! every replica counts against the same allowance.

use super::*;
use crate::limits::{Allowance, Take};

/// Refills the bucket `KEYS[1]` (`ARGV[1]` calls, one back every `ARGV[2]` ms) to now by
/// Redis's clock, takes a token if there is one; returns 0 when taken, else the whole
/// seconds until the next comes back (at least 1). The bucket expires once it would be
/// full again.
const TAKE: &str = r"
local calls = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(b[1])
local at = tonumber(b[2])
if not tokens then tokens = calls; at = now end
if now > at then
  tokens = math.min(calls, tokens + (now - at) / rate)
  at = now
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.max(1, math.ceil((1 - tokens) * rate / 1000))
end
redis.call('HSET', KEYS[1], 't', string.format('%.6f', tokens), 'at', at)
redis.call('PEXPIRE', KEYS[1], math.ceil((calls - tokens) * rate) + 1000)
return wait
";

fn take_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(TAKE))
}

impl Shared {
    /// Takes a token from `key`'s bucket under `allowance`, for every replica. One round
    /// trip.
    pub async fn take_token(&self, key: &str, allowance: Allowance) -> Result<Take, Unavailable> {
        let keys = vec![format!("{}bucket:{key}", self.inner.spec.key_prefix)];
        let args = vec![
            allowance.calls.to_string(),
            format!("{:.3}", allowance.ms_per_call()),
        ];
        let wait: u64 = self.script(take_script(), keys, args).await?;
        Ok(match wait {
            0 => Take::Taken,
            retry_after => Take::Empty { retry_after },
        })
    }
}
