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

use super::chain::ChainError;
use super::journal::JournalError;
use super::state_log::{Mergeable, StateLog};
use super::{SettleError, Unavailable};
use shared::{Put, SharedChannels, Took, Versioned, CLAIMER_LOCK, MAX_ATTEMPTS, SENDER_LOCK};

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
    #[error("channel {0} kept changing; gave up writing it")]
    Contended(B256),
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

    /// levy's receiver authorizer.
    pub fn authorizer(&self) -> Address {
        self.inner.signer.address()
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

    /// Takes the channel of a checked payload for one request at `price`: deposits first
    /// when the payload carries one, then admits its voucher. Holds the channel until
    /// [`Channels::commit`] or [`Channels::release`] (or `hold` passes).
    pub async fn lease(
        &self,
        checked: Checked,
        offer: &Offer,
        network: &str,
        hold: Duration,
        metered: bool,
    ) -> Result<Lease, Refusal> {
        let voucher = checked.voucher().clone();
        let id = voucher.channel_id;
        let depositing = matches!(checked, Checked::Deposit(..));
        let held = self.hold(network, &voucher, hold, depositing).await?;
        let mut lease = Lease {
            voucher,
            price: offer.price,
            metered,
            held,
        };
        if let Err(refusal) = self.resync(network, &mut lease).await {
            self.release_now(&lease).await;
            return Err(refusal);
        }
        if let Checked::Deposit(_, deposit) = &checked {
            // A client out of step, or one withdrawing, learns where the channel stands
            // before its deposit is sent (a deposit is a transaction that cannot be taken
            // back).
            let step = self.judge(id, |ledger| {
                ledger.open_for_calls()?;
                ledger.in_step(&lease.voucher, offer.price)
            });
            let deposited = match step {
                Ok(()) => self.deposit(network, &mut lease, deposit).await,
                Err(refusal) => Err(refusal),
            };
            if let Err(refusal) = deposited {
                self.release_now(&lease).await;
                return Err(refusal);
            }
        }
        if let Err(refusal) = self.judge(id, |ledger| ledger.admits(&lease.voucher, offer.price)) {
            self.release_now(&lease).await;
            return Err(refusal);
        }
        Ok(lease)
    }

    /// Reads the held channel's escrow state again when levy's copy is too old to admit on
    /// ([`Ledger::needs_sync`]: older than its TTL, or a withdrawal pending) and takes it
    /// into the ledger, shared with the other replicas. A read that fails refuses the
    /// request as unavailable (503): a withdrawn deposit must not be spent on calls.
    async fn resync(&self, network: &str, lease: &mut Lease) -> Result<(), Refusal> {
        let id = lease.voucher.channel_id;
        let now = crate::clock::unix_now();
        let stale = lock(&self.inner.slots)
            .get(&id)
            .is_some_and(|slot| slot.ledger.needs_sync(now));
        if !stale {
            return Ok(());
        }
        let chain = self.chain(network).map_err(Refusal::Unavailable)?;
        let escrowed = self
            .read_state(chain, id)
            .await
            .map_err(Refusal::Unavailable)?;
        let observed = self
            .update(id, |ledger| ledger.observe(&escrowed))
            .await
            .map_err(Refusal::Unavailable)?;
        if let (Some(observed), Some((_, version))) = (observed, lease.held.as_mut()) {
            // The hold admits on the ledger as now written.
            *version = observed.version;
        }
        metrics()
            .channel_resyncs
            .with_label_values(&[network])
            .inc();
        Ok(())
    }

    /// Applies a ledger check to channel `id`; a client out of step gets the ledger back
    /// for a corrective challenge.
    fn judge<T>(
        &self,
        id: B256,
        check: impl Fn(&Ledger) -> Result<T, ChannelError>,
    ) -> Result<T, Refusal> {
        let slots = lock(&self.inner.slots);
        let slot = slots
            .get(&id)
            .ok_or(Refusal::Rejected(ChannelError::NotFound))?;
        check(&slot.ledger).map_err(|e| match e {
            ChannelError::CumulativeMismatch { .. } | ChannelError::BelowClaimed => {
                Refusal::Corrective(e, Box::new(slot.ledger.clone()))
            }
            e => Refusal::Rejected(e),
        })
    }

    /// Holds `voucher`'s channel for one request for `hold`, with its ledger in this
    /// replica's cache: read from the escrow for a channel nobody has seen
    /// ([`Channels::read_unknown`]; `depositing` when the request brings the deposit), from
    /// the shared state when replicas share it (then returns the hold's token and the
    /// ledger's version).
    async fn hold(
        &self,
        network: &str,
        voucher: &SignedVoucher,
        hold: Duration,
        depositing: bool,
    ) -> Result<Option<(String, u64)>, Refusal> {
        let id = voucher.channel_id;
        let Some(shared) = self.shared() else {
            self.know(network, voucher, depositing).await?;
            self.take(id, hold)?;
            return Ok(None);
        };
        let (token, found) = self.take_shared(shared.as_ref(), id, hold).await?;
        let Versioned { ledger, version } = match found {
            Some(found) => *found,
            None => match self.read_unknown(network, voucher, depositing).await {
                Ok(ledger) => Versioned { ledger, version: 0 },
                Err(refusal) => {
                    let_go(shared.as_ref(), id, &token).await;
                    return Err(refusal);
                }
            },
        };
        self.install(ledger);
        Ok(Some((token, version)))
    }

    /// Takes channel `id`'s shared hold for `hold` under a new token; returns the token and
    /// the ledger a replica wrote, if one did.
    async fn take_shared(
        &self,
        shared: &dyn SharedChannels,
        id: B256,
        hold: Duration,
    ) -> Result<(String, Option<Box<Versioned>>), Refusal> {
        let token = self.token(shared);
        match shared.take(id, &token, hold).await {
            Ok(Took::Held(found)) => Ok((token, found)),
            Ok(Took::Busy) => Err(Refusal::Rejected(ChannelError::Busy)),
            Err(e) => Err(Refusal::Unavailable(e.into())),
        }
    }

    /// Applies `step` to channel `id`'s shared ledger (read, changed, written unless it
    /// changed meanwhile, again until it did not) and to the cache; returns the ledger and
    /// its version. Without shared state, only the cache.
    async fn update(
        &self,
        id: B256,
        step: impl Fn(&mut Ledger),
    ) -> Result<Option<Versioned>, ChannelsError> {
        let Some(shared) = self.shared() else {
            let mut slots = lock(&self.inner.slots);
            return Ok(slots.get_mut(&id).map(|slot| {
                step(&mut slot.ledger);
                Versioned {
                    ledger: slot.ledger.clone(),
                    version: 0,
                }
            }));
        };
        for _ in 0..MAX_ATTEMPTS {
            let Some(mut current) = shared.get(id).await? else {
                return Ok(None);
            };
            step(&mut current.ledger);
            if let Put::Written(version) =
                shared.put(&current.ledger, current.version, None).await?
            {
                self.install(current.ledger.clone());
                return Ok(Some(Versioned {
                    ledger: current.ledger,
                    version,
                }));
            }
        }
        Err(ChannelsError::Contended(id))
    }

    /// Makes sure levy has a ledger for `voucher`'s channel, reading one from the escrow
    /// for a channel it has not seen.
    async fn know(
        &self,
        network: &str,
        voucher: &SignedVoucher,
        depositing: bool,
    ) -> Result<(), Refusal> {
        let id = voucher.channel_id;
        if lock(&self.inner.slots).contains_key(&id) {
            return Ok(());
        }
        let ledger = self.read_unknown(network, voucher, depositing).await?;
        lock(&self.inner.slots).entry(id).or_insert(Slot {
            ledger,
            busy_until: None,
        });
        Ok(())
    }

    /// Reads a channel levy has not seen from the escrow, within bounds an unauthenticated
    /// client cannot push: at most [`UNKNOWN_CHANNEL_READS`] such reads at once (503
    /// beyond), and a channel with nothing deposited or claimed gets no slot unless the
    /// request brings its deposit; a voucher for it is refused as `NotFound`, without
    /// another read for [`EMPTY_CHANNEL_TTL`].
    async fn read_unknown(
        &self,
        network: &str,
        voucher: &SignedVoucher,
        depositing: bool,
    ) -> Result<Ledger, Refusal> {
        let id = voucher.channel_id;
        if !depositing && self.inner.empty.contains_key(&id) {
            return Err(Refusal::Rejected(ChannelError::NotFound));
        }
        let Ok(_permit) = self.inner.unknown_reads.try_acquire() else {
            metrics()
                .admission_reads_refused
                .with_label_values(&["busy"])
                .inc();
            return Err(Refusal::Unavailable(ChannelsError::Busy));
        };
        let mut ledger = self
            .read_ledger(network, id, voucher.config)
            .await
            .map_err(Refusal::Unavailable)?;
        if !depositing && ledger.balance == 0 && ledger.total_claimed == 0 {
            self.inner.empty.insert(id, ());
            return Err(Refusal::Rejected(ChannelError::NotFound));
        }
        ledger.last_used = crate::clock::unix_now();
        Ok(ledger)
    }

    /// A cooperative refund under a checked zero-charge `voucher`: `requested` (or all
    /// that is not charged) back to the payer, in one escrow transaction that first claims
    /// what was charged and sweeps it to the receiver. The channel is held meanwhile and
    /// read fresh from the chain first (its balance and refund nonce).
    pub async fn refund(
        &self,
        voucher: &SignedVoucher,
        requested: Option<u128>,
        network: &str,
        hold: Duration,
    ) -> Result<Refunded, Refusal> {
        let chain = self.chain(network).map_err(Refusal::Unavailable)?;
        let held = self.hold(network, voucher, hold, false).await?;
        let token = held.map(|(token, _)| token);
        let under = voucher.max_claimable;
        self.refund_taken(
            chain,
            voucher.channel_id,
            token.as_deref(),
            Some(under),
            |ledger| ledger.refund(voucher, requested),
        )
        .await
    }

    /// Refunds every channel nobody paid on for `idle` that has something left (and is not
    /// in use), one transaction each.
    async fn refund_idle(&self, idle: Duration) {
        let now = crate::clock::unix_now();
        let idle_channels: Vec<(B256, String)> = lock(&self.inner.slots)
            .values()
            .filter(|s| s.ledger.is_idle(now, idle.as_secs()))
            .map(|s| (s.ledger.channel_id, s.ledger.network.clone()))
            .collect();
        for (id, network) in idle_channels {
            let Ok(chain) = self.chain(&network) else {
                continue;
            };
            let hold = self.inner.spec.rpc_timeout * 8;
            let token = match self.shared() {
                None => self.take(id, hold).map(|()| None),
                Some(shared) => match self.take_shared(shared.as_ref(), id, hold).await {
                    Ok((token, Some(found))) => {
                        self.install(found.ledger);
                        Ok(Some(token))
                    }
                    Ok((token, None)) => {
                        // Listed but not written: nothing to refund from.
                        let_go(shared.as_ref(), id, &token).await;
                        continue;
                    }
                    Err(refusal) => Err(refusal),
                },
            };
            let Ok(token) = token else {
                continue; // a call is paying on it: not idle after all
            };
            match self
                .refund_taken(chain, id, token.as_deref(), None, Ledger::idle_refund)
                .await
            {
                Ok(done) => ::log::info!("channel {id}: idle; its payer got {} back", done.amount),
                Err(Refusal::Rejected(ChannelError::RefundNoBalance)) => {}
                Err(e) => ::log::warn!("channel {id}: idle refund failed: {e:?}"),
            }
        }
    }

    /// A refund of the held channel `id` as `plan_of` decides from its ledger, read fresh
    /// from the chain; the channel is let go and its new ledger written afterwards.
    async fn refund_taken(
        &self,
        chain: &ChainSender,
        id: B256,
        token: Option<&str>,
        under: Option<u128>,
        plan_of: impl Fn(&Ledger) -> Result<RefundPlan, ChannelError>,
    ) -> Result<Refunded, Refusal> {
        let mut refunded = self.refund_held(chain, id, plan_of).await;
        if let Ok(done) = refunded.as_mut() {
            // What the chain says after the refund, and the voucher it was made under, on
            // the shared ledger too (the chain is read again before any claim, should this
            // fail).
            let escrowed = done.ledger.escrowed();
            let step = |ledger: &mut Ledger| {
                ledger.observe(&escrowed);
                ledger.refunded_under = ledger.refunded_under.max(under);
            };
            step(&mut done.ledger);
            if let Some(slot) = lock(&self.inner.slots).get_mut(&id) {
                step(&mut slot.ledger);
            }
            if let Err(e) = self.update(id, step).await {
                ::log::warn!("channel {id}: cannot share its refund: {e}");
            }
        }
        if let Some(slot) = lock(&self.inner.slots).get_mut(&id) {
            slot.busy_until = None;
        }
        if let (Some(shared), Some(token)) = (self.shared(), token) {
            let_go(shared.as_ref(), id, token).await;
        }
        let refunded = refunded?;
        if let Err(e) = self.inner.log.put(refunded.ledger.clone()).await {
            // The chain holds the refund; the ledger is read from it again before any claim.
            ::log::error!("channel log: {e}");
        }
        Ok(refunded)
    }

    async fn refund_held(
        &self,
        chain: &ChainSender,
        id: B256,
        plan_of: impl Fn(&Ledger) -> Result<RefundPlan, ChannelError>,
    ) -> Result<Refunded, Refusal> {
        let before = self
            .read_state(chain, id)
            .await
            .map_err(Refusal::Unavailable)?;
        // Metered calls streaming on other replicas keep their ceilings too.
        let elsewhere = match self.shared() {
            Some(shared) => shared
                .streaming(id)
                .await
                .map_err(|e| Refusal::Unavailable(e.into()))?,
            None => 0,
        };
        let config = {
            let mut slots = lock(&self.inner.slots);
            let slot = slots
                .get_mut(&id)
                .ok_or(Refusal::Rejected(ChannelError::NotFound))?;
            slot.ledger.observe(&before);
            slot.ledger.streaming = slot.ledger.streaming.max(elsewhere);
            slot.ledger.config
        };
        let plan = self.judge(id, plan_of)?;
        let data = self
            .refund_call(chain, id, &config, &plan)
            .map_err(Refusal::Unavailable)?;
        // Deposits are sent on their request's path, with a payer waiting: a refund waits
        // for them (up to a send's time-out) rather than take their turn.
        let patience = Instant::now() + self.inner.spec.rpc_timeout * 6;
        while self
            .inner
            .deposits_waiting
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
            && Instant::now() < patience
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let transaction = match self.send(chain, data).await {
            Ok(hash) => hash,
            Err(e) => {
                // Whether it landed is read from the chain before anything else is done
                // with this channel; the refund nonce keeps it from landing twice.
                ::log::warn!("channel {id}: refund failed: {e}");
                return Err(Refusal::Rejected(ChannelError::RefundFailed));
            }
        };
        let after = self.read_state(chain, id).await.unwrap_or(Escrowed {
            balance: before.balance.saturating_sub(plan.amount),
            total_claimed: plan
                .claim
                .as_ref()
                .map_or(before.total_claimed, |c| c.total_claimed),
            withdraw_requested_at: before.withdraw_requested_at,
            refund_nonce: plan.nonce + 1,
            read_at: before.read_at,
        });
        let ledger = {
            let mut slots = lock(&self.inner.slots);
            let slot = slots
                .get_mut(&id)
                .ok_or(Refusal::Rejected(ChannelError::NotFound))?;
            slot.ledger.observe(&after);
            slot.ledger.clone()
        };
        let amount = before.balance.saturating_sub(after.balance);
        ::log::info!("channel {id}: refunded {amount} in {transaction}");
        if let Some(claim) = &plan.claim {
            // What was charged went to the payee first, in the same transaction.
            let claimed = claim.total_claimed.saturating_sub(before.total_claimed);
            self.audit(crate::alerts::Event::Claim, &ledger, claimed, transaction);
        }
        self.audit(crate::alerts::Event::Refund, &ledger, amount, transaction);
        metrics()
            .channel_refunds
            .with_label_values(&[&ledger.network])
            .inc();
        Ok(Refunded {
            transaction,
            amount,
            ledger,
        })
    }

    /// The escrow `multicall` of a refund: the claim (signed as a batch of one) and the
    /// sweep when something was charged, then `refundWithSignature`.
    fn refund_call(
        &self,
        chain: &ChainSender,
        channel_id: B256,
        config: &crate::channel::ChannelConfig,
        plan: &RefundPlan,
    ) -> Result<Vec<u8>, ChannelsError> {
        let mut calls = match &plan.claim {
            Some(claim) => self.claim_calls(chain, std::slice::from_ref(claim))?,
            None => Vec::new(),
        };
        let digest = refund_digest(&chain.escrow_domain, channel_id, plan.nonce, plan.amount);
        calls.push(
            IBatchSettlement::refundWithSignatureCall {
                config: config.to_sol(),
                amount: plan.amount,
                nonce: U256::from(plan.nonce),
                receiverAuthorizerSignature: self.sign(digest)?,
            }
            .abi_encode()
            .into(),
        );
        Ok(IBatchSettlement::multicallCall { data: calls }.abi_encode())
    }

    /// The escrow calls that claim `claims` (one `claimWithSignature`, signed by the
    /// authorizer as one batch) and sweep what they claim to each receiver (`settle`, once per
    /// receiver and token).
    fn claim_calls(
        &self,
        chain: &ChainSender,
        claims: &[Claim],
    ) -> Result<Vec<Bytes>, ChannelsError> {
        let signature = self.sign(claim_batch_digest(&chain.escrow_domain, claims))?;
        let mut calls: Vec<Bytes> = vec![IBatchSettlement::claimWithSignatureCall {
            voucherClaims: claims.iter().map(Claim::to_sol).collect(),
            authorizerSignature: signature,
        }
        .abi_encode()
        .into()];
        let mut sweeps: Vec<(Address, Address)> = claims
            .iter()
            .map(|c| (c.config.receiver, c.config.token))
            .collect();
        sweeps.sort();
        sweeps.dedup();
        for (receiver, token) in sweeps {
            calls.push(
                IBatchSettlement::settleCall { receiver, token }
                    .abi_encode()
                    .into(),
            );
        }
        Ok(calls)
    }

    /// The authorizer's signature of `digest`.
    fn sign(&self, digest: B256) -> Result<Bytes, ChannelsError> {
        self.inner
            .signer
            .sign_hash_sync(&digest)
            .map(|s| Bytes::from(s.as_bytes().to_vec()))
            .map_err(|e| ChainError::Signing(e.to_string()).into())
    }

    fn take(&self, id: B256, hold: Duration) -> Result<(), Refusal> {
        let mut slots = lock(&self.inner.slots);
        let slot = slots
            .get_mut(&id)
            .ok_or(Refusal::Rejected(ChannelError::NotFound))?;
        let now = Instant::now();
        if slot.busy_until.is_some_and(|until| until > now) {
            return Err(Refusal::Rejected(ChannelError::Busy));
        }
        slot.busy_until = Some(now + hold);
        Ok(())
    }

    /// [`Channels::release`], returning once the shared hold is gone: a client told "no"
    /// may try again at once, on any replica.
    pub async fn release_now(&self, lease: &Lease) {
        if let Some((shared, token)) = self.release_here(lease) {
            let_go(shared.as_ref(), lease.voucher.channel_id, &token).await;
        }
    }

    /// Lets the channel go uncharged (the origin failed, the client left), the shared hold
    /// in the background.
    pub fn release(&self, lease: &Lease) {
        if let Some((shared, token)) = self.release_here(lease) {
            let id = lease.voucher.channel_id;
            tokio::spawn(async move { let_go(shared.as_ref(), id, &token).await });
        }
    }

    /// Lets `lease`'s channel go on this replica; returns its shared hold, if it has one.
    fn release_here(&self, lease: &Lease) -> Option<(Arc<dyn SharedChannels>, String)> {
        if let Some(slot) = lock(&self.inner.slots).get_mut(&lease.voucher.channel_id) {
            slot.busy_until = None;
        }
        let (token, _) = lease.held.as_ref()?;
        Some((Arc::clone(self.shared()?), token.clone()))
    }

    /// Charges a leased channel for its request: the new ledger is in the channel log
    /// before this returns (and before the response leaves). Returns the ledger the
    /// client is told about.
    pub async fn commit(&self, lease: &Lease) -> Result<Ledger, SettleError> {
        let next = match &lease.held {
            None => self.commit_here(lease).await?,
            Some((token, version)) => self.commit_shared(lease, token, *version).await?,
        };
        metrics()
            .channel_vouchers
            .with_label_values(&[&next.network])
            .inc();
        Ok(next)
    }

    /// [`Channels::commit`] on the shared ledger: written if it is still at `version`, or
    /// on the newer ledger if the voucher is still that one's next; then in the log.
    async fn commit_shared(
        &self,
        lease: &Lease,
        token: &str,
        version: u64,
    ) -> Result<Ledger, SettleError> {
        let id = lease.voucher.channel_id;
        let shared = self.shared().ok_or_else(|| {
            SettleError::Shared(Unavailable::new("a shared hold without shared state"))
        })?;
        let vanished = || SettleError::Shared(Unavailable::new(format!("channel {id} vanished")));
        let mut base = Versioned {
            ledger: self.ledger(id).ok_or_else(vanished)?,
            version,
        };
        for _ in 0..MAX_ATTEMPTS {
            let mut next = base.ledger.clone();
            lease.step(&mut next);
            next.last_used = crate::clock::unix_now();
            let put = shared.put(&next, base.version, Some(token)).await;
            match put.map_err(SettleError::Shared)? {
                Put::Written(_) => {
                    if lease.metered {
                        // Its ceiling stays out of a refund asked of any replica until
                        // the response ends.
                        let until =
                            crate::clock::unix_ms() + METERED_STREAM_HOLD.as_millis() as u64;
                        shared
                            .stream_started(id, token, lease.price, until)
                            .await
                            .map_err(SettleError::Shared)?;
                    }
                    self.install(next.clone());
                    if let Some(slot) = lock(&self.inner.slots).get_mut(&id) {
                        if lease.metered {
                            slot.ledger.streaming =
                                slot.ledger.streaming.saturating_add(lease.price);
                        }
                        slot.busy_until = None;
                    }
                    self.inner.log.put(next.clone()).await.map_err(journal)?;
                    return Ok(next);
                }
                Put::Lost => {
                    return Err(SettleError::Shared(Unavailable::new(format!(
                        "channel {id}: the hold ran out and another request took it"
                    ))))
                }
                Put::Stale => {
                    base = shared
                        .get(id)
                        .await
                        .map_err(SettleError::Shared)?
                        .ok_or_else(vanished)?;
                    if let Err(e) = base.ledger.in_step(&lease.voucher, lease.price) {
                        return Err(SettleError::Shared(Unavailable::new(format!(
                            "channel {id} was charged meanwhile: {e}"
                        ))));
                    }
                }
            }
        }
        Err(SettleError::Shared(Unavailable::new(format!(
            "channel {id} kept changing; gave up writing it"
        ))))
    }

    /// [`Channels::commit`] on this replica's own ledger.
    async fn commit_here(&self, lease: &Lease) -> Result<Ledger, SettleError> {
        let id = lease.voucher.channel_id;
        // A hold that ran out (a slow request) may have let a second request take the same
        // voucher: only the first to commit is charged under it.
        let out_of_step = |ledger: &Ledger| {
            ledger
                .in_step(&lease.voucher, lease.price)
                .err()
                .map(|e| SettleError::Setup(format!("channel {id} was charged meanwhile: {e}")))
        };
        let mut next = {
            let slots = lock(&self.inner.slots);
            let ledger = &slots
                .get(&id)
                .ok_or_else(|| SettleError::Setup("a leased channel vanished".into()))?
                .ledger;
            if let Some(e) = out_of_step(ledger) {
                return Err(e);
            }
            ledger.clone()
        };
        lease.step(&mut next);
        next.last_used = crate::clock::unix_now();
        let written = self.inner.log.put(next.clone()).await;
        let mut slots = lock(&self.inner.slots);
        if let Some(slot) = slots.get_mut(&id) {
            slot.busy_until = None;
            if written.is_ok() {
                if let Some(e) = out_of_step(&slot.ledger) {
                    // Another commit under the same voucher landed meanwhile; the log
                    // holds the same cumulative either way.
                    return Err(e);
                }
                // The same step on the live ledger, which a metered call ending meanwhile
                // may have moved on.
                lease.step(&mut slot.ledger);
                slot.ledger.last_used = next.last_used;
            }
        }
        drop(slots);
        written.map_err(journal)?;
        Ok(next)
    }

    /// Earns `amount` of the `ceiling` a metered call on channel `id` reserved (once its
    /// response ended), in the channel log before this returns.
    pub async fn earn(
        &self,
        id: B256,
        amount: u128,
        ceiling: u128,
        token: Option<&str>,
    ) -> Result<(), SettleError> {
        if let (Some(shared), Some(token)) = (self.shared(), token) {
            if let Err(e) = shared.stream_ended(id, token, ceiling).await {
                // Its ceiling lapses out of the refund hold by itself.
                ::log::warn!("channel {id}: cannot note its metered call ended: {e}");
            }
        }
        if self.shared().is_some() {
            // The stream's ceiling is held here, not in the shared ledger: it stops being
            // held here first.
            if let Some(slot) = lock(&self.inner.slots).get_mut(&id) {
                slot.ledger.streaming = slot.ledger.streaming.saturating_sub(ceiling);
            }
        }
        let earned = self.update(id, |ledger| ledger.earn(amount, ceiling)).await;
        let next = earned
            .map_err(|e| SettleError::Setup(e.to_string()))?
            .ok_or_else(|| SettleError::Setup("a metered channel vanished".into()))?
            .ledger;
        self.inner.log.put(next).await.map_err(journal)
    }

    /// Reads a channel levy has no ledger for from the escrow.
    async fn read_ledger(
        &self,
        network: &str,
        id: B256,
        config: crate::channel::ChannelConfig,
    ) -> Result<Ledger, ChannelsError> {
        let chain = self.chain(network)?;
        let escrowed = self.read_state(chain, id).await?;
        Ok(Ledger::new(
            id,
            config,
            network.to_owned(),
            chain.chain_id,
            &escrowed,
        ))
    }

    fn chain(&self, network: &str) -> Result<&ChainSender, ChannelsError> {
        self.inner
            .chains
            .get(network)
            .ok_or_else(|| ChannelsError::NoChain(network.to_owned()))
    }

    /// What the escrow says about channel `id` now.
    async fn read_state(&self, chain: &ChainSender, id: B256) -> Result<Escrowed, ChannelsError> {
        let channels = self
            .view(chain, IBatchSettlement::channelsCall { channelId: id })
            .await?;
        let pending = self
            .view(
                chain,
                IBatchSettlement::pendingWithdrawalsCall { channelId: id },
            )
            .await?;
        let nonce = self
            .view(chain, IBatchSettlement::refundNonceCall { channelId: id })
            .await?;
        Ok(Escrowed {
            balance: channels.balance,
            total_claimed: channels.totalClaimed,
            withdraw_requested_at: pending.initiatedAt.to::<u64>(),
            refund_nonce: nonce.saturating_to::<u64>(),
            read_at: crate::clock::unix_now(),
        })
    }

    /// One view call on the escrow, decoded.
    async fn view<C: SolCall>(
        &self,
        chain: &ChainSender,
        call: C,
    ) -> Result<C::Return, ChannelsError> {
        let request = TransactionRequest::default()
            .to(BATCH_SETTLEMENT_ADDRESS)
            .input(Bytes::from(call.abi_encode()).into());
        let output =
            match tokio::time::timeout(self.inner.spec.rpc_timeout, chain.provider.call(request))
                .await
            {
                Err(_) => return Err(ChainError::Timeout(C::SIGNATURE).into()),
                Ok(result) => result.map_err(|e| ChainError::classify(C::SIGNATURE, &e))?,
            };
        C::abi_decode_returns(&output)
            .map_err(|e| ChainError::Decode(format!("{}: {e}", C::SIGNATURE)).into())
    }

    /// Sends one escrow transaction and waits for its receipt; `Ok` only when it succeeded.
    async fn send(&self, chain: &ChainSender, data: Vec<u8>) -> Result<B256, ChannelsError> {
        let _turn = self.inner.sending.lock().await;
        let Some(shared) = self.shared() else {
            return self.send_now(chain, data).await;
        };
        // The authorizer's turn over every replica, held past the longest send.
        let token = self.token(shared.as_ref());
        let hold = self.inner.spec.rpc_timeout * 8;
        let deadline = Instant::now() + self.inner.spec.rpc_timeout * 6;
        while !shared.lock(SENDER_LOCK, &token, hold).await? {
            if Instant::now() > deadline {
                return Err(ChannelsError::NoTurn);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let sent = self.send_now(chain, data).await;
        if let Err(e) = shared.unlock(SENDER_LOCK, &token).await {
            ::log::warn!("cannot let the authorizer's turn to send go (it lapses): {e}");
        }
        sent
    }

    /// [`Channels::send`], this replica's turn taken.
    async fn send_now(&self, chain: &ChainSender, data: Vec<u8>) -> Result<B256, ChannelsError> {
        let request = TransactionRequest::default()
            .from(self.inner.signer.address())
            .to(BATCH_SETTLEMENT_ADDRESS)
            .input(Bytes::from(data).into());
        let timeout = self.inner.spec.rpc_timeout * 6;
        let sent = tokio::time::timeout(timeout, async {
            let pending = chain
                .provider
                .send_transaction(request)
                .await
                .map_err(|e| ChainError::classify("eth_sendTransaction", &e))?;
            pending
                .with_timeout(Some(timeout))
                .get_receipt()
                .await
                .map_err(|e| ChainError::Transient {
                    call: "eth_getTransactionReceipt",
                    message: e.to_string(),
                })
        })
        .await
        .map_err(|_| ChainError::Timeout("eth_getTransactionReceipt"))??;
        if sent.status() {
            Ok(sent.transaction_hash)
        } else {
            Err(ChannelsError::Reverted(sent.transaction_hash))
        }
    }

    /// Sends a payload's deposit on chain and credits the channel with what the escrow
    /// says it now holds.
    async fn deposit(
        &self,
        network: &str,
        lease: &mut Lease,
        deposit: &crate::channel::Deposit,
    ) -> Result<(), Refusal> {
        let voucher = &lease.voucher;
        let chain = self.chain(network).map_err(Refusal::Unavailable)?;
        let call = IBatchSettlement::depositCall {
            config: voucher.config.to_sol(),
            amount: deposit.amount,
            collector: ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
            collectorData: deposit.collector_data(),
        };
        let sent = {
            // Counted while it waits and sends, however this ends (a dropped request too).
            let _waiting = Waiting::on(&self.inner.deposits_waiting);
            self.send(chain, call.abi_encode()).await
        };
        match sent {
            Ok(hash) => {
                ::log::info!(
                    "channel {}: deposit of {} in {hash}",
                    voucher.channel_id,
                    deposit.amount
                );
                if let Some(ledger) = self.ledger(voucher.channel_id) {
                    self.audit(crate::alerts::Event::Deposit, &ledger, deposit.amount, hash);
                }
            }
            Err(e) => {
                ::log::info!("channel {}: deposit failed: {e}", voucher.channel_id);
                return Err(Refusal::Rejected(ChannelError::DepositFailed));
            }
        }
        let id = voucher.channel_id;
        let escrowed = self
            .read_state(chain, id)
            .await
            .map_err(Refusal::Unavailable)?;
        if let Some((_, version)) = &mut lease.held {
            // The balance is shared at once; the commit then writes on top of it.
            let updated = self.update(id, |ledger| ledger.observe(&escrowed)).await;
            if let Some(now) = updated.map_err(Refusal::Unavailable)? {
                *version = now.version;
                return Ok(());
            }
            // No replica wrote this channel yet: the commit writes it, balance included.
        }
        if let Some(slot) = lock(&self.inner.slots).get_mut(&id) {
            slot.ledger.observe(&escrowed);
        }
        Ok(())
    }

    /// Claims and sweeps until stopped: everything charged every `claim_every`, channels
    /// with a payer withdrawal pending as soon as the watch sees it.
    pub async fn run(&self) {
        let spec = &self.inner.spec;
        let tick = spec.watch_every.min(spec.claim_every);
        let mut last_claim = Instant::now();
        let mut token = None;
        loop {
            tokio::time::sleep(tick).await;
            if !self.leads(&mut token, tick).await {
                continue;
            }
            if let Err(e) = self.refresh().await {
                ::log::warn!("cannot read the shared channels: {e}");
                continue;
            }
            if last_claim.elapsed() >= spec.claim_every {
                last_claim = Instant::now();
                self.claim_where(|_| true).await;
            } else {
                let withdrawing = self.watch_withdrawals().await;
                if !withdrawing.is_empty() {
                    self.claim_where(|l| withdrawing.contains(&l.channel_id))
                        .await;
                }
            }
            if let Some(idle) = spec.refund_idle_after {
                self.refund_idle(idle).await;
            }
        }
    }

    /// Whether this replica is the one that claims, watches and refunds: always, unless
    /// replicas share channels; then the one holding the claimer lock (`token`, made on
    /// first use), taken or renewed here for a few ticks.
    async fn leads(&self, token: &mut Option<String>, tick: Duration) -> bool {
        let Some(shared) = self.shared() else {
            return true;
        };
        let token = token.get_or_insert_with(|| self.token(shared.as_ref()));
        let hold = (tick * 3).max(self.inner.spec.rpc_timeout * 8);
        match shared.lock(CLAIMER_LOCK, token, hold).await {
            Ok(leads) => leads,
            Err(e) => {
                ::log::warn!("cannot tell which replica claims channels: {e}");
                false
            }
        }
    }

    /// Reads every shared channel into this replica's cache (nothing to do when channels
    /// are not shared): before the claimer's work, which reads the cache.
    async fn refresh(&self) -> Result<(), ChannelsError> {
        let Some(shared) = self.shared() else {
            return Ok(());
        };
        for id in shared.list().await? {
            if let Some(found) = shared.get(id).await? {
                self.install(found.ledger);
            }
        }
        Ok(())
    }

    /// Claims every charged voucher now (the claimer does it on its own schedule): what was
    /// claimed in which transactions, and how many channels could not be (read or sent);
    /// `Err` when the shared channels could not be read at all.
    pub async fn claim_now(&self) -> Result<ClaimReport, ChannelsError> {
        if let Err(e) = self.refresh().await {
            ::log::warn!("cannot read the shared channels: {e}");
            return Err(e);
        }
        Ok(self.claim_where(|_| true).await)
    }

    /// The channels with something to claim whose payer asked to withdraw, read fresh.
    async fn watch_withdrawals(&self) -> Vec<B256> {
        let open: Vec<Ledger> = lock(&self.inner.slots)
            .values()
            .filter(|s| s.ledger.claim().is_some())
            .map(|s| s.ledger.clone())
            .collect();
        let mut withdrawing = Vec::new();
        for ledger in open {
            let Ok(chain) = self.chain(&ledger.network) else {
                continue;
            };
            match self.read_state(chain, ledger.channel_id).await {
                Ok(Escrowed {
                    withdraw_requested_at: at,
                    ..
                }) if at > 0 => {
                    if ledger.withdraw_requested_at == 0 {
                        ::log::info!(
                            "channel {}: the payer asked to withdraw; claiming now",
                            ledger.channel_id
                        );
                    }
                    // On the shared ledger too: every replica's admission stops taking
                    // vouchers on it.
                    if let Err(e) = self
                        .update(ledger.channel_id, |l| l.withdraw_requested_at = at)
                        .await
                    {
                        ::log::warn!(
                            "channel {}: cannot share its withdrawal: {e}",
                            ledger.channel_id
                        );
                    }
                    withdrawing.push(ledger.channel_id);
                }
                Ok(_) => {}
                Err(e) => ::log::warn!("channel {}: {e}", ledger.channel_id),
            }
        }
        withdrawing
    }

    /// Claims the charged vouchers of the channels `pick` selects, per network, in
    /// transactions of at most `max_claims` channels.
    async fn claim_where(&self, pick: impl Fn(&Ledger) -> bool) -> ClaimReport {
        let candidates: Vec<Ledger> = lock(&self.inner.slots)
            .values()
            .filter(|s| pick(&s.ledger) && s.ledger.claim().is_some())
            .map(|s| s.ledger.clone())
            .collect();
        let mut by_network: HashMap<String, Vec<Ledger>> = HashMap::new();
        for ledger in candidates {
            by_network
                .entry(ledger.network.clone())
                .or_default()
                .push(ledger);
        }
        let mut report = ClaimReport::default();
        for (network, ledgers) in by_network {
            let Ok(chain) = self.chain(&network) else {
                report.failed += ledgers.len();
                continue;
            };
            for group in ledgers.chunks(self.inner.spec.max_claims.max(1)) {
                self.claim_group(&network, chain, group, &mut report).await;
            }
        }
        report
    }

    /// One claim transaction: refreshes each channel from the chain (a claim that landed
    /// unseen is taken as done, a balance cut by a withdrawal caps the claim), then claims
    /// and sweeps in one `multicall`.
    async fn claim_group(
        &self,
        network: &str,
        chain: &ChainSender,
        group: &[Ledger],
        report: &mut ClaimReport,
    ) {
        let mut claims: Vec<Claim> = Vec::new();
        // What the chain said each claimed channel had claimed before, and its ledger.
        let mut before: Vec<(u128, Ledger)> = Vec::new();
        for ledger in group {
            let escrowed = match self.read_state(chain, ledger.channel_id).await {
                Ok(escrowed) => escrowed,
                Err(e) => {
                    ::log::warn!(
                        "channel {}: cannot read it before claiming: {e}",
                        ledger.channel_id
                    );
                    report.failed += 1;
                    continue;
                }
            };
            let (balance, claimed) = (escrowed.balance, escrowed.total_claimed);
            // The claim is built on what the chain says was claimed, nothing else.
            let mut current = ledger.clone();
            current.observe(&escrowed);
            current.total_claimed = claimed;
            // What the escrow holds now, on the shared ledger too (a withdrawn balance stops
            // admitting vouchers on every replica).
            if let Err(e) = self
                .update(ledger.channel_id, |l| l.observe(&escrowed))
                .await
            {
                ::log::warn!("channel {}: {e}", ledger.channel_id);
            }
            if let Some(mut claim) = current.claim() {
                if claim.total_claimed > balance {
                    ::log::error!(
                        "channel {}: charged {} but only {balance} is left in escrow; claiming what is there",
                        ledger.channel_id,
                        claim.total_claimed
                    );
                    metrics().channel_shortfalls.inc();
                    claim.total_claimed = balance;
                }
                if claim.total_claimed > claimed {
                    claims.push(claim);
                    before.push((claimed, current.clone()));
                }
            }
        }
        if claims.is_empty() {
            return;
        }
        let calls = match self.claim_calls(chain, &claims) {
            Ok(calls) => calls,
            Err(e) => {
                ::log::error!("cannot build a claim batch: {e}");
                report.failed += claims.len();
                return;
            }
        };
        let data = IBatchSettlement::multicallCall { data: calls }.abi_encode();
        match self.send(chain, data).await {
            Ok(hash) => {
                ::log::info!("{network}: claimed {} channels in {hash}", claims.len());
                report.claimed += claims.len();
                report.transactions.push(hash);
                metrics()
                    .channel_claims
                    .with_label_values(&[network])
                    .inc_by(claims.len() as u64);
                for (claim, (claimed_before, ledger)) in claims.iter().zip(&before) {
                    let claimed = claim.total_claimed;
                    self.audit(
                        crate::alerts::Event::Claim,
                        ledger,
                        claimed.saturating_sub(*claimed_before),
                        hash,
                    );
                    let updated = self
                        .update(claim.channel_id, |ledger| {
                            ledger.total_claimed = ledger.total_claimed.max(claimed);
                        })
                        .await;
                    match updated {
                        Ok(Some(now)) => {
                            if let Err(e) = self.inner.log.put(now.ledger).await {
                                ::log::error!("channel log: {e}");
                            }
                        }
                        Ok(None) => {}
                        // The chain holds the claim; the next one reads it from there.
                        Err(e) => ::log::warn!("channel {}: {e}", claim.channel_id),
                    }
                }
            }
            Err(e) => {
                // Whether it landed is read from the chain before the next claim.
                ::log::warn!("{network}: claim of {} channels failed: {e}", claims.len());
                report.failed += claims.len();
                metrics()
                    .channel_claim_failures
                    .with_label_values(&[network])
                    .inc();
            }
        }
    }
}

/// What one round of claims did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimReport {
    /// Channels claimed.
    pub claimed: usize,
    /// The claim transactions sent.
    pub transactions: Vec<B256>,
    /// Channels with something to claim that could not be claimed (unreadable, or their
    /// transaction failed); the next round tries again.
    pub failed: usize,
}

/// Lets the shared hold `token` on channel `id` go (it lapses by itself should this fail).
async fn let_go(shared: &dyn SharedChannels, id: B256, token: &str) {
    if let Err(e) = shared.let_go(id, token).await {
        ::log::warn!("channel {id}: cannot let its hold go (it lapses): {e}");
    }
}
