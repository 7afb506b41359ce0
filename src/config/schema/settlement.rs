//! `levy.settlement` as written: batching, the settler key, funds checks and exposure caps,
//! the review of failed payments, builder codes, and the facilitator back end.

use super::*;

/// On-chain settlement: the journal, the settler's key, batching, retries, the money caps and
/// the loss budget. Without it payments are verified and charged but never settled. The engine
/// settles on every network a priced route accepts, through that network's `rpc_url` and
/// `multicall`; the settler account needs the chain's native token for gas.
///
/// The caps and the loss budget count atomic units summed over every asset and chain the priced
/// routes accept, so a config with settlement refuses routes that accept assets of different
/// decimals (a cap would mean a different amount for each), and with `levy.state.redis`, whose
/// counters are 64-bit integers, assets of more than 12 decimals. They are per replica for the
/// loss budget (each replica counts its own losses: N replicas allow N × `loss_budget`; set it
/// to your budget divided by the replicas) and shared for the exposure caps. Give every replica
/// its own `state.redis.replica` name. After Redis lost its data, restart every replica.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settlement {
    /// The redb journal store (created if missing); the accept log sits beside it as
    /// `<journal_path>.accepts` and `<journal_path>.accepts-b`: keep, move and back up the
    /// three files together (the log can hold the last ~200 ms of charged payments that the
    /// store does not have yet), and with them `<journal_path>.channels` and
    /// `<journal_path>.bundles` (the channels' latest vouchers and the prepaid bundles:
    /// money too); a damaged channel or bundle log is copied aside as `….damaged-<unix
    /// time>` before levy compacts it. Required.
    pub journal_path: String,
    /// Environment variable holding the settler's private key (hex); never logged. Default:
    /// `LEVY_SETTLER_KEY`.
    #[serde(default = "default_key_env")]
    pub settler_key_env: String,
    /// Read the key from this file instead.
    #[serde(default)]
    pub settler_key_file: Option<String>,
    /// At most this many payments per transaction (1–500). Default: `50`.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Batches that may be broadcast and unresolved at once per network (consecutive
    /// settler nonces), 1–64. Default: 4.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// What a batched payment gets while the queue cannot drain before it expires: settled
    /// before its response, or `503` with `Retry-After`. Default: `settle_first`.
    #[serde(default)]
    pub on_backlog: OnBacklog,
    /// Which batches are simulated on the node before they are sent: `when_unsure` (those
    /// the pre-check cannot decide: one holding a payment retried, sent alone after its
    /// batch failed, from a payer whose account has code (a contract wallet, an EIP-7702
    /// delegation) or valid only within the last minute, and every `upto` batch; an `exact`
    /// batch of fresh, funded payments from plain accounts goes without, and a transfer in
    /// it that fails anyway fails alone and is simulated when sent alone next) or `always`
    /// (the node runs every batch twice).
    /// Default: `when_unsure`.
    #[serde(default)]
    pub simulate: Simulate,
    /// A payment waits at most this long for its batch to fill. Default: `1000`.
    #[serde(default = "default_max_delay_ms")]
    pub max_delay_ms: u64,
    /// An `async`-durability payment goes unsynced at most this long; when the disk falls
    /// further behind, `async` payments wait for the sync too. Default: `50`.
    #[serde(default = "default_async_window_ms")]
    pub async_window_ms: u64,
    /// On-chain failures before `needs_review`. Default: `5`.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, capped at 60 s. Default: `1000`.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// How long one batch waits for its receipt before it is left to reconciliation.
    /// Default: `30000`.
    #[serde(default = "default_receipt_timeout_ms")]
    pub receipt_timeout_ms: u64,
    /// A batch not mined this long is re-signed (same nonce, same calls) at higher fees; at
    /// least 1000. Default: 15000.
    #[serde(default = "default_replace_after_ms")]
    pub replace_after_ms: u64,
    /// Final payments are removed from the journal this long after they became final; `0`
    /// keeps them forever; must cover `funds.deny_seconds` and `loss_window_seconds`.
    /// Default: 30.
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    /// Timeout of each RPC call. Default: `5000`.
    #[serde(default = "default_rpc_timeout_ms")]
    pub rpc_timeout_ms: u64,
    /// A payment that takes the payer's unsettled and in-flight value over this cap is
    /// settled before its response. Default: 1000000 ($1 of USDC).
    #[serde(default = "default_max_unsettled_per_payer")]
    pub max_unsettled_per_payer: Amount,
    /// The same, over all payers. Default: 100000000 ($100 of USDC).
    #[serde(default = "default_max_unsettled_total")]
    pub max_unsettled_total: Amount,
    /// Value served then failed to settle, within `loss_window_seconds`, above which every
    /// batched payment settles before its response. Default: 10000000 ($10 of USDC).
    #[serde(default = "default_loss_budget")]
    pub loss_budget: Amount,
    /// The loss budget's rolling window. Default: 3600.
    #[serde(default = "default_loss_window_seconds")]
    pub loss_window_seconds: u64,
    /// Reads of payers' balances before a batched payment is served, and the deny list.
    #[serde(default)]
    pub funds: Funds,
    /// Settle through an x402 facilitator instead of levy's own key.
    #[serde(default)]
    pub facilitator: Option<Facilitator>,
    /// Escrow channels (`batch-settlement`): levy's receiver authorizer and the claimer's
    /// schedule; required by any route with `channel:`.
    #[serde(default)]
    pub channels: Option<Channels>,
    /// ERC-8021 attribution appended once to every settlement transaction levy sends
    /// (batches and channel claims): `{app, services}`.
    #[serde(default)]
    pub builder_code: Option<BuilderCode>,
}

/// `levy.settlement.builder_code`: the codes an ERC-8021 suffix carries.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BuilderCode {
    /// The app's code (`a`): 1 to 32 of `a-z`, `0-9`, `_`. Required.
    pub app: String,
    /// Service codes (`s`), at most 5, same alphabet.
    #[serde(default)]
    pub services: Vec<String>,
}

/// The balance check before serving batched payments, and the deny list.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Funds {
    /// Read the payer's balance before serving a batched payment (chain mode). Default:
    /// true.
    pub check: bool,
    /// How long a read balance is trusted. Default: 30000.
    pub cache_ms: u64,
    /// How long a zero balance is trusted. Default: 2000.
    pub empty_cache_ms: u64,
    /// Deadline of one balance read. Default: 1000.
    pub read_timeout_ms: u64,
    /// What a payment gets when its payer's balance cannot be read. Default:
    /// `serve_within_caps`.
    pub on_rpc_error: OnRpcError,
    /// How long a payer whose payment failed for a reason of its own
    /// (`insufficient_balance`, `authorization_canceled`, `transfer_would_revert`,
    /// `transfer_reverted`) is refused. Default: 86400.
    pub deny_seconds: u64,
    /// Chain reads for admitting payments (balances, contract-wallet signatures) that may
    /// run at once per network; a payment that would need one more gets `503` with
    /// `Retry-After: 1` (a cached balance or verdict needs none). Default: 64.
    pub max_concurrent_reads: u64,
    /// Signature checks on chain (contract wallets, and 65-byte signatures that do not
    /// recover to their payer) one client address may cause per minute; past it, `429` with
    /// `Retry-After: 60`. Default: 60.
    pub signature_checks_per_minute: u64,
}

impl Default for Funds {
    fn default() -> Self {
        Self {
            check: true,
            cache_ms: 30_000,
            empty_cache_ms: 2_000,
            read_timeout_ms: 1_000,
            on_rpc_error: OnRpcError::ServeWithinCaps,
            deny_seconds: 86_400,
            max_concurrent_reads: 64,
            signature_checks_per_minute: 60,
        }
    }
}

/// What a batched payment gets while the settlement queue is backlogged.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnBacklog {
    #[default]
    SettleFirst,
    Refuse,
}

/// Which settlement batches are simulated before they are sent.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Simulate {
    #[default]
    WhenUnsure,
    Always,
}

/// What to do with a batched payment whose payer's balance cannot be read.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnRpcError {
    #[default]
    ServeWithinCaps,
    Refuse,
}

/// Settle through an x402 facilitator instead of levy's own key. Each payment is settled by one
/// `POST /settle` with the client's original payload and the matched requirement (journaled
/// with the payment); `success: false` on HTTP 200 is a failure with the facilitator's
/// `errorReason`; an unreachable facilitator is retried with backoff; a refusal of a retry
/// (whose first answer was lost) goes to `needs_review` rather than `failed`, since it may echo
/// the first attempt's success. levy logs what `/supported` lists at start.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Facilitator {
    /// Settle through this x402 facilitator (`POST /settle`) instead of levy's own key; no
    /// settler key is needed then.
    pub url: String,
    /// Also ask its `POST /verify` before forwarding a paid request (a network round trip
    /// on the hot path); an invalid answer is a `402` with the facilitator's reason, no
    /// answer (a network error, an HTTP error, a body without `isValid`) a `503` with
    /// `Retry-After`. Default: `false`.
    #[serde(default)]
    pub verify: bool,
    /// HTTP timeout of facilitator calls. Default: `60000`.
    #[serde(default = "default_facilitator_timeout_ms")]
    pub timeout_ms: u64,
}
