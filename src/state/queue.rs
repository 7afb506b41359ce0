//! The shared settlement queue on Redis Streams: one stream of charged payments and one
//! consumer group, `settlers`, whose consumers are the replicas. Reading a payment makes it
//! the reader's (its pending entry); the owner renews its entries while it lives, and
//! `XAUTOCLAIM` hands those of an owner that stopped to another replica.
//!
//! Beside the stream, one key per payment says where it stands — `queued`, `sent:<tx>`
//! (with the signed transaction under `batch:<tx>`, written before it was broadcast, so the
//! replica that takes the payment over reconciles that transaction), `done:<state>` or
//! `review` — and makes appending idempotent. Finishing a payment acknowledges its entry,
//! takes its value out of the queue's share of exposure (field `(queue)` of the exposure
//! hashes) and sends the outcome to the origin's inbox stream, in one script. Every key
//! carries the `{ledger}` tag: one Cluster slot, shared with exposure.

use std::collections::HashSet;

use redis::Script;

use super::Shared;
use crate::settle::queue::{Delivered, QueueOutcome, Sending, SharedQueue, Taken};
use crate::settle::{BatchRecord, PaymentRecord, Reason, SettlementState, Unavailable};

/// The consumer group every replica reads the queue in.
const GROUP: &str = "settlers";

/// How long a finished payment's key keeps saying so (a late append of it is ignored).
const DONE_SECONDS: u64 = 7 * 24 * 3_600;

/// At most this many entries are renewed or handed back per call.
const MAX_ENTRIES: usize = 100_000;

/// Shared by the scripts: `P` is the tagged key prefix (`ARGV[1]`), `Q` the stream, `G` the
/// group (created on first use); `describe` turns stream entries into flat triples of entry
/// id, record JSON and the JSON of the batch the payment was recorded in (or '').
const PRELUDE: &str = r"
local P, G = ARGV[1], ARGV[2]
local Q = P .. 'queue'
local QF = '(queue)'
pcall(redis.call, 'XGROUP', 'CREATE', Q, G, '0', 'MKSTREAM')
local function describe(entries, me)
  local out = {}
  for _, e in ipairs(entries) do
    local fields = e[2]
    if type(fields) ~= 'table' then
      redis.call('XACK', Q, G, e[1])
    else
      local id, record = nil, ''
      for i = 1, #fields, 2 do
        if fields[i] == 'id' then id = fields[i + 1] end
        if fields[i] == 'record' then record = fields[i + 1] end
      end
      local sent = ''
      local state = id and redis.call('GET', P .. 'pay:' .. id)
      if state and string.sub(state, 1, 5) == 'sent:' then
        sent = redis.call('GET', P .. 'batch:' .. string.sub(state, 6)) or ''
      end
      table.insert(out, e[1])
      table.insert(out, record)
      table.insert(out, sent)
    end
  end
  return out
end
local function claim(me, ids)
  for i = 1, #ids, 1000 do
    local call = {'XCLAIM', Q, G, me, '0'}
    for j = i, math.min(i + 999, #ids) do table.insert(call, ids[j]) end
    table.insert(call, 'JUSTID')
    redis.call(unpack(call))
  end
end
";

/// Appends payments given from `ARGV[4]` on, five arguments each: its id, its record, its
/// value, whether origin `ARGV[3]` counted it, its payer. Each is appended unless its key
/// says it was appended before (a payment back from review goes in again). The queue's share
/// of the payer's and the total exposure gains its value on its first append and again when
/// it comes back from review (which released it); when the origin counted it as its own,
/// its share loses it, appended now or before.
const APPEND: &str = r"
for i = 4, #ARGV, 5 do
  local id, record, value, counted, payer = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local key = P .. 'pay:' .. id
  local state = redis.call('GET', key)
  local counts = not state or state == 'review'
  if counts then
    redis.call('XADD', Q, '*', 'id', id, 'origin', ARGV[3], 'record', record)
    redis.call('SET', key, 'queued')
  end
  for _, hash in ipairs({P .. 'payer:' .. payer, P .. 'total'}) do
    if counts then redis.call('HINCRBY', hash, QF, value) end
    if counted == '1' and redis.call('HINCRBY', hash, ARGV[3], '-' .. value) <= 0 then
      redis.call('HDEL', hash, ARGV[3])
    end
  end
end
return 1
";

/// Reads up to `ARGV[4]` entries for consumer `ARGV[3]`: new ones (`ARGV[5]` is '>') or its
/// own pending ones ('0').
const TAKE: &str = r"
local got = redis.call('XREADGROUP', 'GROUP', G, ARGV[3], 'COUNT', ARGV[4], 'STREAMS', Q, ARGV[5])
if not got then return {} end
return describe(got[1][2], ARGV[3])
";

/// Takes over up to `ARGV[5]` entries idle for `ARGV[4]` ms, for consumer `ARGV[3]`.
const TAKE_OVER: &str = r"
local got = redis.call('XAUTOCLAIM', Q, G, ARGV[3], ARGV[4], '0-0', 'COUNT', ARGV[5])
return describe(got[2], ARGV[3])
";

/// Renews every entry consumer `ARGV[3]` owns and returns their ids.
const RENEW: &str = r"
local ids = {}
for _, p in ipairs(redis.call('XPENDING', Q, G, '-', '+', ARGV[4], ARGV[3])) do
  table.insert(ids, p[1])
end
claim(ARGV[3], ids)
return ids
";

/// Checks that consumer `ARGV[3]` owns each entry of the pairs (entry, payment id) from
/// `ARGV[6]` on; returns the ids of those it does not, or else renews them and, when
/// `ARGV[4]` (a transaction hash) is not empty, records batch `ARGV[5]` and each payment as
/// sent in it.
const SENDING: &str = r"
local lost, entries = {}, {}
for i = 6, #ARGV, 2 do
  local p = redis.call('XPENDING', Q, G, ARGV[i], ARGV[i], 1)
  if #p == 0 or p[1][2] ~= ARGV[3] then table.insert(lost, ARGV[i + 1]) end
  table.insert(entries, ARGV[i])
end
if #lost > 0 then return lost end
claim(ARGV[3], entries)
if ARGV[4] ~= '' then
  redis.call('SET', P .. 'batch:' .. ARGV[4], ARGV[5], 'EX', 604800)
  for i = 7, #ARGV, 2 do
    redis.call('SET', P .. 'pay:' .. ARGV[i], 'sent:' .. ARGV[4])
  end
end
return {}
";

/// Finishes payments, eight arguments each from `ARGV[5]` on: entry, id, origin, state,
/// final (1/0), payer, value, outcome JSON. Consumer `ARGV[3]` acknowledges and deletes the
/// entry; the first time only, the key says `done:<state>` for `ARGV[4]` seconds (final)
/// or `review`, the payment's value leaves the queue's share of exposure (once: a payment
/// resolved from review released it already), and the outcome goes to the origin's inbox
/// (unless that is `ARGV[3]`; an inbox nobody reads any more keeps its last million).
const FINISH: &str = r"
for i = 5, #ARGV, 8 do
  local entry, id, origin, state = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  redis.call('XACK', Q, G, entry)
  redis.call('XDEL', Q, entry)
  local key = P .. 'pay:' .. id
  local was = redis.call('GET', key)
  if not (was and string.sub(was, 1, 5) == 'done:') then
    if was ~= 'review' then
      for _, hash in ipairs({P .. 'payer:' .. ARGV[i + 5], P .. 'total'}) do
        if redis.call('HINCRBY', hash, QF, '-' .. ARGV[i + 6]) <= 0 then
          redis.call('HDEL', hash, QF)
        end
      end
    end
    if ARGV[i + 4] == '1' then
      redis.call('SET', key, 'done:' .. state, 'EX', ARGV[4])
    else
      redis.call('SET', key, 'review')
    end
    if origin ~= ARGV[3] then
      redis.call('XADD', P .. 'outcomes:' .. origin, 'MAXLEN', '~', '1000000', '*', 'id', id, 'outcome', ARGV[i + 7])
    end
  end
end
return 0
";

/// The outcome as it travels to the origin.
#[derive(serde::Serialize, serde::Deserialize)]
struct Told {
    state: SettlementState,
    reason: Option<Reason>,
    tx_hash: Option<alloy_primitives::B256>,
}

/// The scripts, compiled once (their hashes) per process.
struct Scripts {
    append: Script,
    take: Script,
    take_over: Script,
    renew: Script,
    sending: Script,
    finish: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| {
        let with = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            append: with(APPEND),
            take: with(TAKE),
            take_over: with(TAKE_OVER),
            renew: with(RENEW),
            sending: with(SENDING),
            finish: with(FINISH),
        }
    })
}

impl Shared {
    /// The prefix every queue key starts with (the `{ledger}` tag included).
    fn ledger_prefix(&self) -> String {
        format!("{}{{ledger}}:", self.inner.spec.key_prefix)
    }

    /// Runs `script` with the prelude's arguments (prefix, group) then `args`; its key is
    /// the stream (so Cluster routes it to the `{ledger}` slot).
    async fn queue_call<T: redis::FromRedisValue>(
        &self,
        script: &'static Script,
        args: Vec<String>,
    ) -> Result<T, Unavailable> {
        let prefix = self.ledger_prefix();
        let stream = format!("{prefix}queue");
        let mut all = vec![prefix, GROUP.to_owned()];
        all.extend(args);
        self.script(script, vec![stream], all).await
    }

    /// Reads the triples `describe` returns.
    fn taken(&self, flat: Vec<String>) -> Vec<Taken> {
        flat.chunks(3)
            .filter_map(|triple| {
                let [entry, record, sent] = triple else {
                    return None;
                };
                let mut record: PaymentRecord = match serde_json::from_str(record) {
                    Ok(record) => record,
                    Err(e) => {
                        log::error!(
                            "shared queue entry {entry} is unreadable ({e}); left for an operator"
                        );
                        return None;
                    }
                };
                record.entry = Some(entry.clone());
                let sent = (!sent.is_empty())
                    .then(|| serde_json::from_str::<BatchRecord>(sent).ok())
                    .flatten();
                Some(Taken { record, sent })
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl SharedQueue for Shared {
    fn replica(&self) -> &str {
        &self.inner.spec.replica
    }

    async fn append(&self, records: &[(PaymentRecord, bool)]) -> Result<(), Unavailable> {
        if records.is_empty() {
            return Ok(());
        }
        let mut args = Vec::with_capacity(1 + 5 * records.len());
        args.push(self.inner.spec.replica.clone());
        for (record, counted_here) in records {
            args.push(record.id.clone());
            args.push(serde_json::to_string(record)?);
            args.push(record.amount.to_string());
            args.push(if *counted_here { "1" } else { "0" }.to_owned());
            args.push(format!("{:#x}", record.payer));
        }
        self.queue_call::<i64>(&scripts().append, args)
            .await
            .map(|_| ())
    }

    async fn take_new(&self, count: usize) -> Result<Vec<Taken>, Unavailable> {
        let args = vec![
            self.inner.spec.replica.clone(),
            count.to_string(),
            ">".to_owned(),
        ];
        let flat = self.queue_call(&scripts().take, args).await?;
        Ok(self.taken(flat))
    }

    async fn take_own(&self) -> Result<Vec<Taken>, Unavailable> {
        let args = vec![
            self.inner.spec.replica.clone(),
            MAX_ENTRIES.to_string(),
            "0".to_owned(),
        ];
        let flat = self.queue_call(&scripts().take, args).await?;
        Ok(self.taken(flat))
    }

    async fn take_over(&self, idle_ms: u64, count: usize) -> Result<Vec<Taken>, Unavailable> {
        let args = vec![
            self.inner.spec.replica.clone(),
            idle_ms.to_string(),
            count.to_string(),
        ];
        let flat = self.queue_call(&scripts().take_over, args).await?;
        Ok(self.taken(flat))
    }

    async fn renew(&self) -> Result<HashSet<String>, Unavailable> {
        let args = vec![self.inner.spec.replica.clone(), MAX_ENTRIES.to_string()];
        let ids: Vec<String> = self.queue_call(&scripts().renew, args).await?;
        Ok(ids.into_iter().collect())
    }

    async fn sending(
        &self,
        batch: Option<&BatchRecord>,
        records: &[PaymentRecord],
    ) -> Result<Sending, Unavailable> {
        let mut args = vec![self.inner.spec.replica.clone()];
        match batch {
            Some(batch) => {
                args.push(batch.tx_hash.clone());
                args.push(serde_json::to_string(batch)?);
            }
            None => args.extend([String::new(), String::new()]),
        }
        for record in records {
            if let Some(entry) = &record.entry {
                args.push(entry.clone());
                args.push(record.id.clone());
            }
        }
        if args.len() == 3 {
            return Ok(Sending::Clear);
        }
        let lost: Vec<String> = self.queue_call(&scripts().sending, args).await?;
        Ok(if lost.is_empty() {
            Sending::Clear
        } else {
            Sending::Lost(lost)
        })
    }

    async fn finished(&self, outcomes: &[QueueOutcome]) -> Result<(), Unavailable> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut args = vec![self.inner.spec.replica.clone(), DONE_SECONDS.to_string()];
        for o in outcomes {
            let told = Told {
                state: o.state,
                reason: o.reason,
                tx_hash: o.tx_hash,
            };
            args.extend([
                o.entry.clone(),
                o.id.clone(),
                o.origin.clone(),
                o.state.as_str().to_owned(),
                if o.state.is_final() { "1" } else { "0" }.to_owned(),
                format!("{:#x}", o.payer),
                o.amount.to_string(),
                serde_json::to_string(&told)?,
            ]);
        }
        self.queue_call::<i64>(&scripts().finish, args)
            .await
            .map(|_| ())
    }

    async fn inbox(&self, count: usize) -> Result<Vec<Delivered>, Unavailable> {
        let key = format!("{}outcomes:{}", self.ledger_prefix(), self.replica());
        let entries: redis::streams::StreamRangeReply = self
            .run(|mut conn, _| async move {
                redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(entries
            .ids
            .into_iter()
            .filter_map(|entry| {
                let id: String = entry.get("id")?;
                let text: String = entry.get("outcome")?;
                let told: Told = serde_json::from_str(&text).ok()?;
                Some(Delivered {
                    at: entry.id,
                    id,
                    state: told.state,
                    reason: told.reason,
                    tx_hash: told.tx_hash,
                })
            })
            .collect())
    }

    async fn applied(&self, at: &[String]) -> Result<(), Unavailable> {
        if at.is_empty() {
            return Ok(());
        }
        let key = format!("{}outcomes:{}", self.ledger_prefix(), self.replica());
        let at = at.to_vec();
        self.run(|mut conn, _| async move {
            redis::cmd("XDEL")
                .arg(&key)
                .arg(&at)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(|_| ())
    }
}
