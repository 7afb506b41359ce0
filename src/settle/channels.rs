//! Escrow channels (`batch-settlement`) on chain: every channel's ledger in memory and in
//! the channel log, one request in flight per channel (a lease), deposits sent on the
//! request path, and the claimer: every `claim_every` it claims all charged vouchers,
//! many channels per `claimWithSignature` transaction signed by levy's receiver
//! authorizer, and sweeps them to the receivers with `settle` in the same transaction;
//! every `watch_every` it looks for payer withdrawals and claims those channels at once, long
//! before their withdraw delay ends. Claims are built from the chain's `totalClaimed`, read
//! just before: a claim whose fate was unknown is never repeated, only completed.
//! Cooperative refunds (asked by the payer, or levy's own for channels left idle) claim what
//! was charged and return the rest in one transaction.
//!
//! Channel transactions are sent from the authorizer's own account, one at a time, so they
//! never race the settlement engine's nonces.
//!
//! With state shared on Redis ([`shared`]), every replica serves every channel: the ledger,
//! the hold per request and the authorizer's turn to send live there, this replica's slots
//! are a cache of them, and one replica at a time claims, watches and refunds.
//!
//! This file holds the types and the channels' state; the work is in [`lease`] (the request
//! path), [`refund`], [`claimer`] and [`sender`] (the escrow's reads and transactions).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, Bytes, B256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use alloy::sol_types::SolCall;

use alloy::primitives::U256;

use crate::channel::{
    claim_batch_digest, refund_digest, ChannelError, Checked, Claim, Escrowed, IBatchSettlement,
    Ledger, Offer, RefundPlan, SignedVoucher, BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
};
use crate::metrics::metrics;
use crate::sync::lock;

use super::chain::ChainError;
use super::journal::JournalError;
use super::state_log::{Mergeable, StateLog};
use super::{SettleError, Unavailable};
use shared::{Put, SharedChannels, Took, Versioned, CLAIMER_LOCK, MAX_ATTEMPTS, SENDER_LOCK};

mod claimer;
mod lease;
mod refund;
mod sender;
pub mod shared;

impl Mergeable for Ledger {
    type Key = B256;
    fn key(&self) -> B256 {
        self.channel_id
    }
    fn merge(&mut self, other: &Ledger) {
        Ledger::merge(self, other);
    }
}

/// What channel settlement needs, from `levy.settlement.channels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelsSpec {
    pub authorizer: Address,
    pub key_env: String,
    pub key_file: Option<PathBuf>,
    pub claim_every: Duration,
    pub watch_every: Duration,
    pub max_claims: usize,
    /// Channels unused this long are refunded what they have not spent; `None`: never.
    pub refund_idle_after: Option<Duration>,
    /// `<journal_path>.channels`.
    pub log_path: PathBuf,
    /// RPC endpoint and chain id per network name.
    pub rpcs: Vec<(String, String, u64)>,
    pub rpc_timeout: Duration,
    /// The ERC-8021 suffix appended to every channel transaction, when configured.
    pub builder_code: Option<Vec<u8>>,
}

/// Why a channel payment is not served.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// A 402 with this reason.
    Rejected(ChannelError),
    /// A 402 telling the client where the channel stands, so it can re-sign.
    Corrective(ChannelError, Box<Ledger>),
    /// The chain or the shared state could not be asked: 503, retry.
    Unavailable(ChannelsError),
}

/// Why a channel operation could not be done now: the chain, the shared state or the
/// authorizer's key failed levy. None of them says anything about the payer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChannelsError {
    #[error("no RPC endpoint for network {0}")]
    NoChain(String),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Shared(#[from] Unavailable),
    #[error("transaction {0} reverted")]
    Reverted(B256),
    #[error("another replica kept the authorizer's turn to send")]
    NoTurn,
    #[error("too many unknown channels are being read at once")]
    Busy,
}

/// A channel held for one request: its voucher is admitted for `price` (for a metered
/// route, the ceiling).
#[derive(Debug, Clone)]
pub struct Lease {
    pub voucher: SignedVoucher,
    pub price: u128,
    /// The call is metered: the commit reserves `price`, and [`Channels::earn`] takes what
    /// the response delivered.
    pub metered: bool,
    /// With shared state: the hold's token and the version of the ledger it admitted on.
    held: Option<(String, u64)>,
}

/// How long a metered call's ceiling stays out of refunds on other replicas if its replica
/// never says the call ended (it died mid-stream).
const METERED_STREAM_HOLD: Duration = Duration::from_secs(3600);

impl Lease {
    /// Its shared hold's token (replicas sharing channels only).
    pub fn token(&self) -> Option<&str> {
        self.held.as_ref().map(|(token, _)| token.as_str())
    }

    /// What the request does to its channel's ledger: its price charged, or (metered) its
    /// ceiling reserved.
    fn step(&self, ledger: &mut Ledger) {
        if self.metered {
            ledger.reserve(&self.voucher, self.price);
        } else {
            ledger.charge(&self.voucher, self.price);
        }
    }
}

/// A channel's audit line for `event`: `amount` atomic units of `ledger`'s token, its id
/// the channel and, for a voucher, its cumulative amount (`<channel>:<cumulative>`).
pub fn audit_entry(
    event: crate::alerts::Event,
    ledger: &Ledger,
    route: &str,
    amount: u128,
    tx_hash: Option<B256>,
) -> crate::alerts::Entry {
    let id = match event {
        crate::alerts::Event::Voucher => format!("{}:{}", ledger.channel_id, ledger.cumulative()),
        _ => format!(
            "{}:{}",
            ledger.channel_id,
            tx_hash.map_or_else(String::new, |h| h.to_string())
        ),
    };
    crate::alerts::Entry {
        event,
        id,
        route: route.to_owned(),
        network: ledger.network.clone(),
        payer: ledger.config.payer,
        pay_to: ledger.config.receiver,
        asset: ledger.config.token,
        amount: U256::from(amount),
        nonce: ledger.channel_id,
        tx_hash,
        reason: None,
        units: None,
    }
}

/// A deposit counted as waiting to send for as long as this lives.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn on(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A cooperative refund that landed.
#[derive(Debug, Clone)]
pub struct Refunded {
    pub transaction: B256,
    /// Returned to the payer.
    pub amount: u128,
    /// The channel after it.
    pub ledger: Ledger,
}

struct Slot {
    ledger: Ledger,
    busy_until: Option<Instant>,
}

struct ChainSender {
    provider: DynProvider,
    chain_id: u64,
    /// The escrow's EIP-712 domain separator on this chain.
    escrow_domain: B256,
}

struct Inner {
    spec: ChannelsSpec,
    signer: PrivateKeySigner,
    chains: HashMap<String, ChainSender>,
    slots: Mutex<HashMap<B256, Slot>>,
    log: StateLog<Ledger>,
    /// One channel transaction at a time.
    sending: tokio::sync::Mutex<()>,
    /// Deposits waiting for their turn to send: a payer-asked refund waits behind them.
    deposits_waiting: std::sync::atomic::AtomicUsize,
    /// Where deposits, refunds and claims are audited, if anywhere.
    audit: OnceLock<Arc<crate::alerts::AuditLog>>,
    /// The state replicas share, when they do.
    shared: OnceLock<Arc<dyn SharedChannels>>,
    /// Counts this run's hold tokens.
    tokens: AtomicU64,
    /// Channels read from the escrow with nothing in them, lately: a voucher for one is
    /// refused without another read.
    empty: moka::sync::Cache<B256, ()>,
    /// Reads of channels levy has not seen that may run at once.
    unknown_reads: tokio::sync::Semaphore,
}

/// How long a channel read with nothing in it is refused without another read.
const EMPTY_CHANNEL_TTL: Duration = Duration::from_secs(2);

/// Reads of unknown channels (three `eth_call`s each) that may run at once; beyond, 503.
const UNKNOWN_CHANNEL_READS: usize = 16;

/// Handle to the channels.
#[derive(Clone)]
pub struct Channels {
    inner: Arc<Inner>,
}

fn journal(e: JournalError) -> SettleError {
    SettleError::Journal(e)
}

impl Channels {
    /// Reads the authorizer key (it must be `spec.authorizer`'s) and the channel log.
    pub fn open(spec: ChannelsSpec) -> Result<Self, SettleError> {
        let signer = super::read_key(spec.key_file.as_deref(), &spec.key_env)?;
        if signer.address() != spec.authorizer {
            return Err(SettleError::Setup(format!(
                "the channel key is {}'s, but levy.settlement.channels.authorizer is {}",
                signer.address(),
                spec.authorizer
            )));
        }
        let mut chains = HashMap::new();
        for (network, rpc_url, chain_id) in &spec.rpcs {
            let url = rpc_url
                .parse()
                .map_err(|e| SettleError::Setup(format!("bad RPC URL for {network}: {e}")))?;
            let provider = ProviderBuilder::new()
                .wallet(EthereumWallet::from(signer.clone()))
                .connect_http(url)
                .erased();
            chains.insert(
                network.clone(),
                ChainSender {
                    provider,
                    chain_id: *chain_id,
                    escrow_domain: crate::channel::domain_separator(*chain_id),
                },
            );
        }
        let (log, ledgers) = StateLog::open(&spec.log_path, "channel").map_err(journal)?;
        if !ledgers.is_empty() {
            ::log::info!("channel log: {} channels restored", ledgers.len());
        }
        let slots = ledgers
            .into_iter()
            .map(|(id, ledger)| {
                (
                    id,
                    Slot {
                        ledger,
                        busy_until: None,
                    },
                )
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                spec,
                signer,
                chains,
                slots: Mutex::new(slots),
                log,
                sending: tokio::sync::Mutex::new(()),
                deposits_waiting: std::sync::atomic::AtomicUsize::new(0),
                audit: OnceLock::new(),
                shared: OnceLock::new(),
                tokens: AtomicU64::new(0),
                empty: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(EMPTY_CHANNEL_TTL)
                    .build(),
                unknown_reads: tokio::sync::Semaphore::new(UNKNOWN_CHANNEL_READS),
            }),
        })
    }

    /// From now on channels are shared with the other replicas through `shared` (called
    /// once, before levy serves).
    pub fn share(&self, shared: Arc<dyn SharedChannels>) {
        if self.inner.shared.set(shared).is_err() {
            ::log::warn!("channels were shared already");
        }
    }

    fn shared(&self) -> Option<&Arc<dyn SharedChannels>> {
        self.inner.shared.get()
    }

    /// Audits deposits, refunds and claims to `audit` from now on (called once, at start).
    pub fn set_audit(&self, audit: Arc<crate::alerts::AuditLog>) {
        let _ = self.inner.audit.set(audit);
    }

    /// Writes `event`'s audit line for `ledger`, if levy keeps an audit log.
    fn audit(&self, event: crate::alerts::Event, ledger: &Ledger, amount: u128, tx: B256) {
        if let Some(audit) = self.inner.audit.get() {
            audit.write(audit_entry(event, ledger, "", amount, Some(tx)));
        }
    }

    /// A token no other hold (of any replica, any run) has.
    fn token(&self, shared: &dyn SharedChannels) -> String {
        super::run_token(shared.replica(), &self.inner.tokens)
    }

    /// Puts `ledger` in this replica's cache, keeping what it streams locally.
    fn install(&self, ledger: Ledger) {
        let mut slots = lock(&self.inner.slots);
        match slots.get_mut(&ledger.channel_id) {
            Some(slot) => {
                let streaming = slot.ledger.streaming;
                slot.ledger = ledger;
                slot.ledger.streaming = streaming;
            }
            None => {
                slots.insert(
                    ledger.channel_id,
                    Slot {
                        ledger,
                        busy_until: None,
                    },
                );
            }
        }
    }

    /// Every channel's ledger as this replica's log restored it (or levy holds it now).
    pub fn ledgers(&self) -> Vec<Ledger> {
        lock(&self.inner.slots)
            .values()
            .map(|s| s.ledger.clone())
            .collect()
    }

    /// A channel's ledger as levy holds it.
    pub fn ledger(&self, channel_id: B256) -> Option<Ledger> {
        lock(&self.inner.slots)
            .get(&channel_id)
            .map(|s| s.ledger.clone())
    }
}

/// Lets the shared hold `token` on channel `id` go (it lapses by itself should this fail).
async fn let_go(shared: &dyn SharedChannels, id: B256, token: &str) {
    if let Err(e) = shared.let_go(id, token).await {
        ::log::warn!("channel {id}: cannot let its hold go (it lapses): {e}");
    }
}
