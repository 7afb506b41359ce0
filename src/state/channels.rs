//! Shared channels on Redis: per channel, a hash with the ledger's JSON and its version,
//! and a hold key (a token with an expiry: `SET NX PX`, let go only by its token), both
//! under the channel's own hash tag `{ch:<id>}`, so one script sees both on any Cluster
//! node; a set of every channel written (what the claimer reads), and the named locks.

use std::time::Duration;

use alloy_primitives::B256;
use redis::Script;

use super::Shared;
use crate::channel::Ledger;
use crate::settle::channels::shared::{Put, SharedChannels, Took, Versioned};
use crate::settle::Unavailable;

/// Holds the channel (`KEYS[2]`) for token `ARGV[1]` for `ARGV[2]` ms unless another token
/// does; returns `held` and, when written, the ledger's JSON and version (`KEYS[1]`).
const TAKE: &str = r"
local h = redis.call('GET', KEYS[2])
if h and h ~= ARGV[1] then return {'busy'} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local got = redis.call('HMGET', KEYS[1], 'rec', 'ver')
if not got[1] then return {'held'} end
return {'held', got[1], got[2]}
";

/// Writes ledger `ARGV[2]` if the version is still `ARGV[1]` and, with a token `ARGV[3]`,
/// no other token holds the channel (its own hold is let go).
const PUT: &str = r"
local h = redis.call('GET', KEYS[2])
if ARGV[3] ~= '' and h and h ~= ARGV[3] then return {'lost'} end
local ver = tonumber(redis.call('HGET', KEYS[1], 'ver') or '0')
if ver ~= tonumber(ARGV[1]) then return {'stale'} end
redis.call('HSET', KEYS[1], 'rec', ARGV[2], 'ver', ver + 1)
if ARGV[3] ~= '' and h == ARGV[3] then redis.call('DEL', KEYS[2]) end
return {'written', tostring(ver + 1)}
";

/// Takes or renews lock `KEYS[1]` for token `ARGV[1]` for `ARGV[2]` ms.
const LOCK: &str = r"
local h = redis.call('GET', KEYS[1])
if h and h ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

struct Scripts {
    take: Script,
    put: Script,
    lock: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        take: Script::new(TAKE),
        put: Script::new(PUT),
        lock: Script::new(LOCK),
    })
}

impl Shared {
    /// Channel `id`'s ledger key and hold key.
    fn channel_keys(&self, id: B256) -> [String; 2] {
        let base = format!("{}{{ch:{id:x}}}:", self.inner.spec.key_prefix);
        [format!("{base}ledger"), format!("{base}hold")]
    }

    /// Channel `id`'s metered calls streaming now: a sorted set of [`stream_member`]s by
    /// when each lapses (unix ms).
    fn streams_key(&self, id: B256) -> String {
        format!("{}{{ch:{id:x}}}:streams", self.inner.spec.key_prefix)
    }

    fn channel_index(&self) -> String {
        format!("{}channels", self.inner.spec.key_prefix)
    }

    fn lock_key(&self, name: &str) -> String {
        format!("{}lock:{name}", self.inner.spec.key_prefix)
    }

    /// Puts what this replica's channel log says of a channel back into a Redis that lost
    /// it, on connection `conn` at start: written as logged where no replica republished
    /// it yet, otherwise folded into what one did ([`Ledger::absorb`]).
    pub(super) async fn restore_channel(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        logged: &Ledger,
    ) -> redis::RedisResult<()> {
        let keys = self.channel_keys(logged.channel_id);
        for _ in 0..crate::settle::channels::shared::MAX_ATTEMPTS {
            let (rec, ver): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(&keys[0])
                .arg("rec")
                .arg("ver")
                .query_async(conn)
                .await?;
            let (merged, version) = match rec.zip(ver).map(|(r, v)| versioned(&r, &v)) {
                Some(Ok(shared)) => {
                    let mut ledger = shared.ledger;
                    ledger.absorb(logged);
                    (ledger, shared.version)
                }
                Some(Err(e)) => {
                    log::warn!("{e}: left as it is");
                    return Ok(());
                }
                None => {
                    let mut ledger = logged.clone();
                    ledger.synced_at = 0;
                    (ledger, 0)
                }
            };
            let json = serde_json::to_string(&merged).unwrap_or_default();
            let got: Vec<String> = scripts()
                .put
                .key(&keys[0])
                .key(&keys[1])
                .arg(version)
                .arg(json)
                .arg("")
                .invoke_async(conn)
                .await?;
            if got.first().map(String::as_str) == Some("written") {
                redis::cmd("SADD")
                    .arg(self.channel_index())
                    .arg(format!("{:x}", logged.channel_id))
                    .query_async::<i64>(conn)
                    .await?;
                return Ok(());
            }
        }
        log::warn!(
            "channel {} kept changing while it was republished",
            logged.channel_id
        );
        Ok(())
    }
}

/// A metered call in a channel's streams set: its hold's token and its ceiling.
fn stream_member(token: &str, ceiling: u128) -> String {
    format!("{token}|{ceiling}")
}

/// A ledger and its version as Redis holds them.
fn versioned(rec: &str, ver: &str) -> Result<Versioned, Unavailable> {
    let ledger: Ledger =
        serde_json::from_str(rec).map_err(|e| format!("a shared channel is unreadable: {e}"))?;
    let version = ver
        .parse()
        .map_err(|_| format!("a shared channel's version is `{ver}`"))?;
    Ok(Versioned { ledger, version })
}

#[async_trait::async_trait]
impl SharedChannels for Shared {
    fn replica(&self) -> &str {
        &self.inner.spec.replica
    }

    async fn get(&self, id: B256) -> Result<Option<Versioned>, Unavailable> {
        let [ledger, _] = self.channel_keys(id);
        let got: (Option<String>, Option<String>) = self
            .run(|mut conn, _| async move {
                redis::cmd("HMGET")
                    .arg(&ledger)
                    .arg("rec")
                    .arg("ver")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        match got {
            (Some(rec), Some(ver)) => versioned(&rec, &ver).map(Some),
            _ => Ok(None),
        }
    }

    async fn stream_started(
        &self,
        id: B256,
        token: &str,
        ceiling: u128,
        until_ms: u64,
    ) -> Result<(), Unavailable> {
        let (key, member) = (self.streams_key(id), stream_member(token, ceiling));
        let now_ms = crate::clock::unix_ms();
        self.run(|mut conn, _| async move {
            // Calls whose replicas never said they ended go first.
            redis::pipe()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now_ms)
                .ignore()
                .cmd("ZADD")
                .arg(&key)
                .arg(until_ms)
                .arg(&member)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    async fn stream_ended(&self, id: B256, token: &str, ceiling: u128) -> Result<(), Unavailable> {
        let (key, member) = (self.streams_key(id), stream_member(token, ceiling));
        self.run(|mut conn, _| async move {
            redis::cmd("ZREM")
                .arg(&key)
                .arg(&member)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(|_| ())
    }

    async fn streaming(&self, id: B256) -> Result<u128, Unavailable> {
        let key = self.streams_key(id);
        let now_ms = crate::clock::unix_ms();
        let members: Vec<String> = self
            .run(|mut conn, _| async move {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(now_ms)
                    .arg("+inf")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(members
            .iter()
            .filter_map(|m| m.rsplit('|').next()?.parse::<u128>().ok())
            .fold(0u128, u128::saturating_add))
    }

    async fn take(&self, id: B256, token: &str, hold: Duration) -> Result<Took, Unavailable> {
        let ms = hold.as_millis().max(1).to_string();
        let got: Vec<String> = self
            .script(
                &scripts().take,
                self.channel_keys(id).to_vec(),
                vec![token.to_owned(), ms],
            )
            .await?;
        match got.as_slice() {
            [busy] if busy == "busy" => Ok(Took::Busy),
            [_] => Ok(Took::Held(None)),
            [_, rec, ver] => Ok(Took::Held(Some(Box::new(versioned(rec, ver)?)))),
            other => Err(format!("unexpected answer to a channel hold: {other:?}").into()),
        }
    }

    async fn put(
        &self,
        ledger: &Ledger,
        version: u64,
        token: Option<&str>,
    ) -> Result<Put, Unavailable> {
        let id = ledger.channel_id;
        let json = serde_json::to_string(ledger)?;
        let args = vec![version.to_string(), json, token.unwrap_or("").to_owned()];
        let got: Vec<String> = self
            .script(&scripts().put, self.channel_keys(id).to_vec(), args)
            .await?;
        let put = match got.as_slice() {
            [what] if what == "stale" => Put::Stale,
            [what] if what == "lost" => Put::Lost,
            [_, ver] => Put::Written(ver.parse().map_err(|_| format!("version `{ver}`"))?),
            other => return Err(format!("unexpected answer to a channel write: {other:?}").into()),
        };
        if put == Put::Written(1) {
            // The first write: the claimer finds the channel from now on.
            let index = self.channel_index();
            let member = format!("{id:x}");
            self.run(|mut conn, _| async move {
                redis::cmd("SADD")
                    .arg(&index)
                    .arg(&member)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await?;
        }
        Ok(put)
    }

    async fn let_go(&self, id: B256, token: &str) -> Result<(), Unavailable> {
        let [_, hold] = self.channel_keys(id);
        self.script::<i64>(&self.inner.release, vec![hold], vec![token.to_owned()])
            .await
            .map(|_| ())
    }

    async fn list(&self) -> Result<Vec<B256>, Unavailable> {
        let index = self.channel_index();
        let members: Vec<String> = self
            .run(|mut conn, _| async move {
                redis::cmd("SMEMBERS")
                    .arg(&index)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(members.iter().filter_map(|m| m.parse().ok()).collect())
    }

    async fn lock(&self, name: &str, token: &str, hold: Duration) -> Result<bool, Unavailable> {
        let ms = hold.as_millis().max(1).to_string();
        let got: i64 = self
            .script(
                &scripts().lock,
                vec![self.lock_key(name)],
                vec![token.to_owned(), ms],
            )
            .await?;
        Ok(got == 1)
    }

    async fn unlock(&self, name: &str, token: &str) -> Result<(), Unavailable> {
        self.script::<i64>(
            &self.inner.release,
            vec![self.lock_key(name)],
            vec![token.to_owned()],
        )
        .await
        .map(|_| ())
    }
}
