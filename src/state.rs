//! State that replicas share (`levy.state.redis`), on Redis: the replay set, exposure, the
//! payer deny list, the settlement queue (`queue`), channel ledgers (`channels`) and
//! bundles with their sign-in-with-x nonces (`sessions`), payment ids (`retries`), free
//! tiers and rate limits (`limits`). Each replica keeps its own
//! in-process replay set and journal; Redis decides which replica may take an authorization,
//! so one payment buys one response however many replicas it is sent to, and sums what every
//! replica has served unsettled.
//!
//! A claim is one Lua script, one round trip: it returns the key's owner, or sets the key
//! (`held:<replica>`; a replica holds an authorization at most once, its own replay set sees
//! to that) to expire at the authorization's own deadline plus a margin, so every replica's
//! keys expire together whatever their clocks say. A charged payment's key becomes
//! `used:<replica>`; a released one is deleted, only by the replica that holds it
//! (compare-and-delete). Both happen off the request path, through [`SharedNonceStore`],
//! levy's replay set when state is shared. Redis errors fail closed: the caller answers 503
//! and charges nothing.
//!
//! Keys name the money: `<prefix>{<payer>}:n:<chain>:<asset>:<nonce>`; the payer in braces
//! is a Redis Cluster hash tag, so one payer's keys share a slot.
//!
//! Exposure (unsettled value per payer and in total) is counted per replica: one hash per
//! payer and one for the total, a field per replica, so a restarted replica replaces its own
//! share with what its journal says and never counts a payment twice. A payment's reservation
//! adds to both and reads both sums back in one script, so two replicas reserving at once
//! each see the other's share. These keys, and the settlement queue's (`queue`), share the
//! tag `{ledger}`: one Cluster slot, so one script can move a payment's exposure along with
//! the payment.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use tokio::sync::OnceCell;

use alloy_primitives::{Address, U256};

use crate::nonce::{MemoryNonceStore, NonceKey, NonceStore, Reservation};
use crate::settle::exposure::{Mirror, Shares};
use crate::settle::Unavailable;
use crate::sync::lock;

mod channels;
mod limits;
mod nonces;
mod publish;
mod queue;
mod retries;
mod sessions;

pub use nonces::SharedNonceStore;
pub use retries::IdClaim;

/// How long the claims charged or released after a first one are gathered before they go to
/// Redis together.
const CLAIMS_GATHERED_FOR: Duration = Duration::from_millis(2);

/// What became of a claimed authorization.
#[derive(Debug, Clone, Copy)]
enum Settled {
    /// Its payment was charged: the key says so until it expires.
    Used,
    /// Nothing was charged: the key is deleted.
    Released,
}

/// Seconds a replay key outlives its authorization's deadline (clock differences between
/// replicas and the chain).
const EXPIRY_MARGIN_SECONDS: u64 = 120;

/// What `levy.state.redis` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSpec {
    pub url: String,
    /// Put in front of every key, so levy deployments (or versions) sharing one Redis
    /// cannot collide.
    pub key_prefix: String,
    /// How long one Redis command may take before levy gives up on it (and answers 503).
    pub timeout: Duration,
    /// This replica's name, the same across its restarts (its share of exposure is kept
    /// under it).
    pub replica: String,
    /// How long a replica's queued payments may go unrenewed before another takes them.
    pub takeover_after: Duration,
}

/// Why shared state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("levy.state.redis.url: {0}")]
    Url(String),
    #[error("cannot reach Redis at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "Redis at {url} has `maxmemory-policy {policy}`: it may evict keys, and an evicted replay key lets a payment be spent twice; set `maxmemory-policy noeviction`"
    )]
    Evicts { url: String, policy: String },
}

/// Who holds an authorization, as far as every replica is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayClaim {
    /// This request holds it now.
    Claimed,
    /// A request (on this replica or another) holds it right now.
    InFlight,
    /// It already paid for a response.
    Used,
    /// Redis could not be asked: nothing may be charged.
    Unavailable(Unavailable),
}

impl ReplayClaim {
    /// What the claim script's answer says: no owner (claimed now), a `used:` one, or a
    /// request holding it.
    fn of(owner: Option<String>) -> Self {
        match owner {
            None => ReplayClaim::Claimed,
            Some(owner) if owner.starts_with("used:") => ReplayClaim::Used,
            Some(_) => ReplayClaim::InFlight,
        }
    }
}

/// What [`Shared::claim_and_reserve`] found.
#[derive(Debug)]
pub enum ClaimAndReserve {
    /// Claimed for this replica and counted: the sums over every replica, this payment
    /// included.
    Counted(Shares),
    /// Another request holds the authorization or it was used (`InFlight`, `Used`); nothing
    /// stays counted.
    NotClaimed(ReplayClaim),
    /// A replica denied the payer (the reason); nothing stays claimed.
    Denied(String),
    /// Redis could not be asked: nothing may be charged.
    Unavailable(Unavailable),
}

/// Returns the key's value when it exists; otherwise sets it to expire at `ARGV[2]` (unix
/// milliseconds) and returns nothing.
const CLAIM: &str = r"
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
return false
";

/// Replaces the key's value with `ARGV[2]` (keeping its expiry) if it is still `ARGV[1]`.
const MARK_USED: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
";

/// Unless the payer is denied (`KEYS[4]` holds the reason, returned alone), adds `ARGV[2]`
/// to this replica's field `ARGV[1]` of the payer's (`KEYS[1]`) and the total (`KEYS[2]`)
/// exposure, notes the payer's key in the replica's index (`KEYS[3]`), and returns both sums
/// over every replica.
const RESERVE: &str = r"
local denied = redis.call('GET', KEYS[4])
if denied then return {denied} end
redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[3], KEYS[1])
local function sum(key)
  local s = 0
  for _, v in ipairs(redis.call('HVALS', key)) do s = s + tonumber(v) end
  return string.format('%d', s)
end
return {sum(KEYS[1]), sum(KEYS[2])}
";

/// Adds `ARGV[2]` (negative: removes) to this replica's field `ARGV[1]` of the payer's and the
/// total exposure, never below zero.
const MOVE: &str = r"
for i = 1, 2 do
  local v = redis.call('HINCRBY', KEYS[i], ARGV[1], ARGV[2])
  if v <= 0 then redis.call('HDEL', KEYS[i], ARGV[1]) end
end
if tonumber(ARGV[2]) > 0 then redis.call('SADD', KEYS[3], KEYS[1]) end
return 0
";

/// Forgets this replica's whole share (field `ARGV[1]` of every payer hash in its index
/// `KEYS[1]`, and of the total `KEYS[2]`).
const FORGET: &str = r"
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('HDEL', key, ARGV[1])
end
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 0
";

/// Deletes the key if it is still `ARGV[1]`.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

struct Inner {
    spec: RedisSpec,
    client: Client,
    /// Made on first use, in the runtime that serves requests.
    conn: OnceCell<ConnectionManager>,
    /// Why the last command failed; `None` after a success.
    last_error: Mutex<Option<String>>,
    /// The epoch every replica found in Redis at start; when Redis no longer has it, Redis
    /// lost levy's state (a restart without persistence, a failover to a copy that lacked
    /// it) and this replica fails closed until it is restarted and republishes.
    epoch: String,
    lost: Mutex<Option<String>>,
    /// Claims charged or released since the last round trip that told Redis.
    settled_claims: Mutex<Vec<(Settled, String)>>,
    claim: Script,
    release: Script,
    move_exposure: Script,
    deny: Script,
}

/// Handle to the shared state.
#[derive(Clone)]
pub struct Shared {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("url", &redacted(&self.inner.spec.url))
            .field("replica", &self.inner.spec.replica)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Connects to Redis once to check it can hold levy's state (reachable, no eviction),
    /// then returns a handle whose connection is made on first use.
    pub fn open(spec: RedisSpec) -> Result<Self, StateError> {
        let client = Client::open(spec.url.as_str()).map_err(|e| StateError::Url(e.to_string()))?;
        check_policy(&client, &spec)?;
        let epoch = join_epoch(&client, &spec)?;
        Ok(Self {
            inner: Arc::new(Inner {
                spec,
                client,
                conn: OnceCell::new(),
                last_error: Mutex::new(None),
                epoch,
                lost: Mutex::new(None),
                settled_claims: Mutex::new(Vec::new()),
                claim: Script::new(CLAIM),
                release: Script::new(RELEASE),
                move_exposure: Script::new(MOVE),
                deny: Script::new(DENY),
            }),
        })
    }

    /// How long a replica's queued payments may go unrenewed before another takes them.
    pub fn takeover_after(&self) -> Duration {
        self.inner.spec.takeover_after
    }

    /// Why Redis could not be used last time, if it could not.
    pub fn unhealthy(&self) -> Option<String> {
        lock(&self.inner.lost)
            .clone()
            .or_else(|| lock(&self.inner.last_error).clone())
    }

    /// Claims `key` until the authorization's deadline `valid_before` (unix seconds), for
    /// every replica.
    pub async fn claim_nonce(&self, key: &NonceKey, valid_before: u64) -> ReplayClaim {
        let expires_ms = expiry_ms(valid_before);
        let held = self.held();
        let answer: Result<Option<String>, Unavailable> = self
            .run(|mut conn, inner| {
                let key = self.nonce_key(key);
                async move {
                    inner
                        .claim
                        .key(key)
                        .arg(held)
                        .arg(expires_ms)
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await;
        match answer {
            Ok(owner) => ReplayClaim::of(owner),
            Err(e) => ReplayClaim::Unavailable(e),
        }
    }

    /// Marks a claimed authorization used (its payment was charged), in the background,
    /// with the others marked or released meanwhile ([`Shared::settle_claims`]).
    pub fn mark_used(&self, key: &NonceKey) {
        // On failure the key stays `held` until it expires: still refused everywhere.
        self.note_claim(Settled::Used, self.nonce_key(key));
    }

    /// Gives a claimed authorization back (nothing was charged), in the background, with
    /// the others marked or released meanwhile; only this replica's own claim is deleted.
    pub fn release_nonce(&self, key: &NonceKey) {
        // On failure the payer must sign a new authorization until it expires: nothing is
        // lost.
        self.note_claim(Settled::Released, self.nonce_key(key));
    }

    /// Notes what became of a claim; the first noted since the last round trip sends them
    /// all a moment later ([`CLAIMS_GATHERED_FOR`]), in one pipeline.
    fn note_claim(&self, settled: Settled, key: String) {
        let first = {
            let mut waiting = lock(&self.inner.settled_claims);
            waiting.push((settled, key));
            waiting.len() == 1
        };
        if first {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(CLAIMS_GATHERED_FOR).await;
                this.settle_claims().await;
            });
        }
    }

    /// Sends what became of the claims noted since the last round trip: each used one
    /// marked, each released one deleted, in one pipeline.
    async fn settle_claims(&self) {
        let waiting = std::mem::take(&mut *lock(&self.inner.settled_claims));
        if waiting.is_empty() {
            return;
        }
        let (held, used) = (self.held(), self.used());
        let count = waiting.len();
        let sent: Result<Vec<redis::Value>, Unavailable> = self
            .run(|mut conn, _| async move {
                // EVAL: scripts Redis lacks (after its restart) cannot fail one of them.
                let mut pipe = redis::pipe();
                for (settled, key) in &waiting {
                    match settled {
                        Settled::Used => pipe
                            .cmd("EVAL")
                            .arg(MARK_USED)
                            .arg(1)
                            .arg(key)
                            .arg(&held)
                            .arg(&used),
                        Settled::Released => {
                            pipe.cmd("EVAL").arg(RELEASE).arg(1).arg(key).arg(&held)
                        }
                    };
                }
                pipe.query_async(&mut conn).await
            })
            .await;
        if let Err(e) = sent {
            log::warn!("cannot mark {count} payments used or released in Redis: {e}");
        }
    }

    /// Runs the script `pick` chooses on `keys` with `args`, off the request path; a failure
    /// is logged as not being able to `what`.
    fn in_background(
        &self,
        pick: fn(&Inner) -> &Script,
        keys: Vec<String>,
        args: Vec<String>,
        what: &'static str,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let done: Result<i64, Unavailable> = this.script(pick(&this.inner), keys, args).await;
            if let Err(e) = done {
                log::warn!("cannot {what} in Redis: {e}");
            }
        });
    }

    /// Claims authorization `key` until `valid_before` (as [`Shared::claim_nonce`]) and counts
    /// `amount` in `payer`'s and the total exposure (as [`Shared::reserve_exposure`]) in one
    /// round trip: both scripts in one pipeline (their keys live in different Cluster
    /// slots, so they are not one script). What one did that the other's answer undoes (a
    /// reservation for a payment another replica holds, a claim for a denied payer) is
    /// undone off the request path.
    pub async fn claim_and_reserve(
        &self,
        key: &NonceKey,
        valid_before: u64,
        payer: Address,
        amount: U256,
    ) -> ClaimAndReserve {
        let nonce = self.nonce_key(key);
        let (held, expires_ms) = (self.held(), expiry_ms(valid_before));
        let keys = self.exposure_keys(payer);
        let deny = deny_key(&self.inner.spec.key_prefix, payer);
        let (replica, counted) = (self.inner.spec.replica.clone(), amount.to_string());
        let answer: Result<(Option<String>, Vec<String>), Unavailable> = self
            .run(|mut conn, _| async move {
                // EVAL, not EVALSHA: a script Redis lacks (after its restart) would fail
                // alone, and sending the pipeline again would find this claim already made.
                let mut pipe = redis::pipe();
                pipe.cmd("EVAL")
                    .arg(CLAIM)
                    .arg(1)
                    .arg(&nonce)
                    .arg(&held)
                    .arg(expires_ms);
                pipe.cmd("EVAL")
                    .arg(RESERVE)
                    .arg(4)
                    .arg(&keys)
                    .arg(&deny)
                    .arg(&replica)
                    .arg(&counted);
                pipe.query_async(&mut conn).await
            })
            .await;
        let (owner, sums) = match answer {
            Ok(answer) => answer,
            Err(e) => return ClaimAndReserve::Unavailable(e),
        };
        let claim = ReplayClaim::of(owner);
        let reserved = match sums.as_slice() {
            [reason] => Err(reason.clone()),
            _ => Ok(()),
        };
        match (claim, reserved) {
            (ReplayClaim::Claimed, Ok(())) => {
                let parse = |i: usize| {
                    sums.get(i)
                        .and_then(|v| U256::from_str_radix(v, 10).ok())
                        .ok_or_else(|| {
                            Unavailable::new("Redis answered an unreadable exposure sum")
                        })
                };
                match (parse(0), parse(1)) {
                    (Ok(payer), Ok(total)) => ClaimAndReserve::Counted(Shares { payer, total }),
                    (Err(e), _) | (_, Err(e)) => {
                        self.release_nonce(key);
                        self.move_exposure(payer, format!("-{amount}"));
                        ClaimAndReserve::Unavailable(e)
                    }
                }
            }
            (ReplayClaim::Claimed, Err(reason)) => {
                self.release_nonce(key);
                ClaimAndReserve::Denied(reason)
            }
            (refused, reserved) => {
                if reserved.is_ok() {
                    self.move_exposure(payer, format!("-{amount}"));
                }
                ClaimAndReserve::NotClaimed(refused)
            }
        }
    }

    /// The payer's exposure hash, the total's, and this replica's index of payer hashes.
    fn exposure_keys(&self, payer: Address) -> [String; 3] {
        let spec = &self.inner.spec;
        [
            exposure_payer_key(&spec.key_prefix, payer),
            exposure_total_key(&spec.key_prefix),
            exposure_index_key(&spec.key_prefix, &spec.replica),
        ]
    }

    /// Moves this replica's share of `payer`'s exposure by `delta` (signed), off the request
    /// path. On failure it stays counted too high until this replica restarts: payments
    /// settle first sooner, nothing is lost.
    fn move_exposure(&self, payer: Address, delta: String) {
        let args = vec![self.inner.spec.replica.clone(), delta];
        self.in_background(
            |i| &i.move_exposure,
            self.exposure_keys(payer).to_vec(),
            args,
            "update the shared exposure",
        );
    }

    /// Pings Redis every `every` until the process ends, so `/readyz` tells when it is gone
    /// and back even while no paid request comes.
    pub async fn watch(&self, every: Duration) {
        loop {
            if let Ok(Some(why)) = self.check_epoch().await {
                log::error!("{why}");
                *lock(&self.inner.lost) = Some(why);
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Why Redis no longer holds levy's state, if it does not: its epoch key is gone or
    /// another (`Err`: Redis could not be asked).
    async fn check_epoch(&self) -> Result<Option<String>, Unavailable> {
        let key = epoch_key(&self.inner.spec.key_prefix);
        let now: Option<String> =
            self.run(|mut conn, _| async move {
                redis::cmd("GET").arg(&key).query_async(&mut conn).await
            })
            .await?;
        Ok(
            (now.as_deref() != Some(self.inner.epoch.as_str())).then(|| {
                "Redis lost levy's shared state (its epoch key is gone or new: a restart without \
             persistence, or a failover to a copy without it); priced routes answer 503 until \
             this replica is restarted and republishes its journal"
                    .to_owned()
            }),
        )
    }

    fn held(&self) -> String {
        format!("held:{}", self.inner.spec.replica)
    }

    fn used(&self) -> String {
        format!("used:{}", self.inner.spec.replica)
    }

    fn nonce_key(&self, key: &NonceKey) -> String {
        nonce_key(&self.inner.spec.key_prefix, key)
    }
    /// Runs `script` on `keys` with `args` (through [`Shared::run`]).
    async fn script<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<T, Unavailable> {
        self.run(|mut conn, _| async move {
            let mut call = script.prepare_invoke();
            for key in &keys {
                call.key(key);
            }
            for arg in &args {
                call.arg(arg);
            }
            call.invoke_async(&mut conn).await
        })
        .await
    }

    /// Runs one command on the shared connection within the timeout, recording the outcome
    /// for [`Shared::unhealthy`].
    async fn run<T, F, Fut>(&self, command: F) -> Result<T, Unavailable>
    where
        F: FnOnce(ConnectionManager, Arc<Inner>) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let inner = &self.inner;
        if let Some(lost) = lock(&inner.lost).clone() {
            return Err(Unavailable::new(lost));
        }
        crate::metrics::metrics().state_round_trips.inc();
        let outcome = tokio::time::timeout(inner.spec.timeout, async {
            let conn = inner
                .conn
                .get_or_try_init(|| async {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(inner.spec.timeout))
                        .set_response_timeout(Some(inner.spec.timeout))
                        .set_number_of_retries(1)
                        .set_max_delay(Duration::from_secs(1));
                    inner
                        .client
                        .get_connection_manager_with_config(config)
                        .await
                })
                .await
                .map_err(Unavailable::new)?
                .clone();
            command(conn, Arc::clone(inner))
                .await
                .map_err(Unavailable::new)
        })
        .await
        .unwrap_or_else(|_| Err(Unavailable::new("Redis did not answer in time")));
        *lock(&inner.last_error) = outcome.as_ref().err().map(ToString::to_string);
        outcome
    }
}

impl Mirror for Shared {
    fn added(&self, payer: Address, amount: U256) {
        self.move_exposure(payer, amount.to_string());
    }
    fn removed(&self, payer: Address, amount: U256) {
        self.move_exposure(payer, format!("-{amount}"));
    }
    fn denied(&self, payer: Address, reason: &'static str, until: u64) {
        // On failure only this replica refuses the payer: nothing is lost, the exposure caps
        // still bound what the others serve it.
        let key = deny_key(&self.inner.spec.key_prefix, payer);
        let until_ms = until.saturating_mul(1000).to_string();
        self.in_background(
            |i| &i.deny,
            vec![key],
            vec![reason.to_owned(), until_ms],
            "share a payer denial",
        );
    }
}

/// Where a payer's denial is kept (in the `{ledger}` slot, read by the reservation).
fn deny_key(prefix: &str, payer: Address) -> String {
    format!("{prefix}{{ledger}}:deny:{payer:#x}")
}

/// Sets the denial `ARGV[1]` to expire at `ARGV[2]` (unix milliseconds).
const DENY: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
return 0
";

/// A payer's exposure hash (all exposure and queue keys share the `{ledger}` Cluster slot).
fn exposure_payer_key(prefix: &str, payer: Address) -> String {
    format!("{prefix}{{ledger}}:payer:{payer:#x}")
}

/// The total exposure hash.
fn exposure_total_key(prefix: &str) -> String {
    format!("{prefix}{{ledger}}:total")
}

/// The set of payer hashes a replica has a share in.
fn exposure_index_key(prefix: &str, replica: &str) -> String {
    format!("{prefix}{{ledger}}:replica:{replica}")
}

/// The Redis key of an authorization: the payer in braces (a Cluster hash tag), then what
/// makes the authorization unique.
fn nonce_key(prefix: &str, key: &NonceKey) -> String {
    format!(
        "{prefix}{{{:#x}}}:n:{}:{:#x}:{:#x}",
        key.from, key.chain_id, key.asset, key.nonce
    )
}

/// Refuses a Redis that cannot be reached or may evict keys.
fn check_policy(client: &Client, spec: &RedisSpec) -> Result<(), StateError> {
    let limit = spec.timeout.max(Duration::from_secs(2));
    let pair = at_start(client, spec, Some(limit), |mut conn| async move {
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async::<Vec<String>>(&mut conn)
            .await
    })?;
    let policy = pair.get(1).cloned().unwrap_or_default();
    if policy != "noeviction" {
        return Err(StateError::Evicts {
            url: redacted(&spec.url),
            policy,
        });
    }
    Ok(())
}

fn epoch_key(prefix: &str) -> String {
    format!("{prefix}epoch")
}

/// The epoch of levy's state in Redis: the one a replica set before, or a new one.
fn join_epoch(client: &Client, spec: &RedisSpec) -> Result<String, StateError> {
    let mine = format!("{:016x}", crate::settle::run_id());
    set_once(client, spec, epoch_key(&spec.key_prefix), mine)
}

/// Key `key`'s value, which is `value` unless a replica set it first (at start).
fn set_once(
    client: &Client,
    spec: &RedisSpec,
    key: String,
    value: String,
) -> Result<String, StateError> {
    let limit = spec.timeout.max(Duration::from_secs(2));
    at_start(client, spec, Some(limit), |mut conn| async move {
        let _: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        redis::cmd("GET").arg(&key).query_async(&mut conn).await
    })
}

/// Runs `command` on a connection of its own, before levy serves: on a runtime and a thread
/// of their own (the caller may already be inside a runtime), within `limit` if any.
fn at_start<T, F, Fut>(
    client: &Client,
    spec: &RedisSpec,
    limit: Option<Duration>,
    command: F,
) -> Result<T, StateError>
where
    T: Send,
    F: FnOnce(redis::aio::MultiplexedConnection) -> Fut + Send,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let unreachable = |reason: String| StateError::Unreachable {
        url: redacted(&spec.url),
        reason,
    };
    let run = || -> Result<T, StateError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unreachable(format!("cannot start a runtime: {e}")))?;
        runtime.block_on(async {
            let ask = async {
                let conn = client.get_multiplexed_async_connection().await?;
                command(conn).await
            };
            let answer = match limit {
                Some(limit) => tokio::time::timeout(limit, ask)
                    .await
                    .map_err(|_| unreachable("it did not answer in time".into()))?,
                None => ask.await,
            };
            answer.map_err(|e| unreachable(e.to_string()))
        })
    };
    std::thread::scope(|scope| {
        scope
            .spawn(run)
            .join()
            .unwrap_or_else(|_| Err(unreachable("the call panicked".into())))
    })
}

/// When a replay key expires, in unix milliseconds: the authorization's deadline
/// `valid_before` (unix seconds) plus the margin.
fn expiry_ms(valid_before: u64) -> u64 {
    valid_before
        .saturating_add(EXPIRY_MARGIN_SECONDS)
        .saturating_mul(1000)
}

/// A Redis URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://…@{host}"),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{address, b256};

    #[test]
    fn a_password_never_reaches_a_message() {
        assert_eq!(
            redacted("redis://levy:s3cret@10.0.0.5:6379/0"),
            "redis://…@10.0.0.5:6379/0"
        );
        assert_eq!(redacted("redis://10.0.0.5:6379"), "redis://10.0.0.5:6379");
    }

    #[test]
    fn one_payers_replay_keys_share_a_cluster_hash_tag() {
        let key = NonceKey {
            chain_id: 84532,
            asset: address!("036CbD53842c5426634e7929541eC2318f3dCF7e"),
            from: address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266"),
            nonce: b256!("00000000000000000000000000000000000000000000000000000000000000aa"),
        };
        assert_eq!(
            nonce_key("levy:v1:", &key),
            "levy:v1:{0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266}:n:84532:\
             0x036cbd53842c5426634e7929541ec2318f3dcf7e:\
             0x00000000000000000000000000000000000000000000000000000000000000aa"
        );
    }
}
