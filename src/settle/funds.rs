//! What levy knows of payers' money before it serves them: a cache of each payer's token
//! balance per (chain, asset), read from the chain in one multicall together with the
//! presented authorization's `authorizationState`, and the deny list of payers whose
//! payments failed on chain after being served. A warm entry answers without I/O; a miss
//! reads the chain once (concurrent misses for one payer share the read) within a deadline.
//! Balances are kept net of what levy settled since the read, so a settled payment is never
//! counted as money the payer still has.
//!
//! What unauthenticated requests can make levy read is bounded here too: at most
//! `max_concurrent_reads` admission reads run per chain (more answer [`ReadError::Busy`]),
//! and each client address has a budget of signature checks on chain per minute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;
use alloy::primitives::{Address, B256, U256};
use moka::Expiry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One payer's token on one chain.
pub type FundsKey = (u64, Address, Address);

/// A cached balance, net of levy's settlements since it was read.
#[derive(Debug)]
pub struct Balance {
    value: Mutex<U256>,
    /// The block it was read at (0: unknown).
    block: u64,
    /// The authorization whose state was read with the balance, and whether it was used.
    first_nonce: B256,
    first_nonce_used: bool,
}

impl Balance {
    pub fn new(value: U256, block: u64, nonce: B256, nonce_used: bool) -> Self {
        Self {
            value: Mutex::new(value),
            block,
            first_nonce: nonce,
            first_nonce_used: nonce_used,
        }
    }

    pub fn get(&self) -> U256 {
        *lock(&self.value)
    }

    fn spend(&self, amount: U256) {
        let mut value = lock(&self.value);
        *value = value.saturating_sub(amount);
    }
}

/// What a funds lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FundsView {
    /// The payer's balance (net of levy's settlements since it was read), and the block it
    /// was read at (0: unknown).
    Known { balance: U256, block: u64 },
    /// The chain already marks this authorization used or canceled.
    AuthorizationUsed,
    /// The chain could not be read in time.
    Unknown,
    /// As many admission reads of this chain as allowed were running: none was started.
    Busy,
}

/// Why an admission read of the chain gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// `max_concurrent_reads` reads of the chain were running: this one was not started.
    Busy,
    /// The read failed (an RPC error) or ran past its deadline.
    Failed,
}

/// What to do with a payment whose payer's balance cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRpcError {
    /// Serve it within the exposure caps (which bound the loss).
    #[default]
    ServeWithinCaps,
    /// Answer 503: nothing is served unverified.
    Refuse,
}

/// The settings of the payer-state cache and the deny list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FundsConfig {
    /// Read balances before serving batched payments (chain mode only).
    pub check: bool,
    /// How long a read balance is trusted.
    pub ttl: Duration,
    /// How long a zero balance is trusted (short, so a payer who funds gets in soon).
    pub empty_ttl: Duration,
    /// The deadline of one read.
    pub read_timeout: Duration,
    pub on_rpc_error: OnRpcError,
    /// How long a payer whose payment failed on chain is refused.
    pub deny_for: Duration,
    /// Admission reads (balances, contract-wallet signatures) that may run at once per chain.
    pub max_concurrent_reads: usize,
    /// Signature checks on chain (contract wallets, and signatures that do not recover to
    /// their payer) one client address may cause per minute.
    pub signature_checks_per_minute: u32,
}

/// Why a payer is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    /// The failure that put the payer on the list (a fixed reason code).
    pub reason: &'static str,
    /// Unix second the entry lapses.
    pub until: u64,
}

struct BalanceExpiry {
    ttl: Duration,
    empty_ttl: Duration,
}

impl Expiry<FundsKey, Arc<Balance>> for BalanceExpiry {
    fn expire_after_create(
        &self,
        _key: &FundsKey,
        value: &Arc<Balance>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(if value.get().is_zero() {
            self.empty_ttl
        } else {
            self.ttl
        })
    }
}

struct DenyExpiry;

impl Expiry<Address, Denial> for DenyExpiry {
    fn expire_after_create(
        &self,
        _key: &Address,
        value: &Denial,
        _now: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            value.until.saturating_sub(crate::clock::unix_now()),
        ))
    }

    fn expire_after_update(
        &self,
        key: &Address,
        value: &Denial,
        now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, now)
    }
}

/// A contract wallet's signature on one chain: `(chain id, signer, keccak256(digest ‖
/// signature))`.
pub type SignatureKey = (u64, Address, B256);

/// The payer-state cache, the deny list and the chain's verdicts on contract-wallet
/// signatures (so a payment retried after a release is not checked twice).
pub struct Funds {
    config: FundsConfig,
    balances: moka::future::Cache<FundsKey, Arc<Balance>>,
    denied: moka::sync::Cache<Address, Denial>,
    signatures: moka::sync::Cache<SignatureKey, bool>,
    /// Payers' token allowances to Permit2 (`upto`), trusted as briefly as an empty
    /// balance, so a payer who approves gets in soon.
    allowances: moka::future::Cache<FundsKey, Approval>,
    /// Admission reads running, per chain id.
    gates: Mutex<HashMap<u64, Arc<Semaphore>>>,
    /// Each client address's budget of signature checks on chain (idle ones forgotten).
    budgets: moka::sync::Cache<IpAddr, Arc<Mutex<Bucket>>>,
}

/// A token bucket: `tokens` left as of `at`, refilled continuously to its capacity.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// An `upto` payer's state as read from the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UptoPayerState {
    pub balance: U256,
    /// Its token allowance to Permit2.
    pub allowance: U256,
    /// The token's `nonces(payer)` (EIP-2612), where the token has one.
    pub permit_nonce: Option<U256>,
}

/// A payer's allowance to Permit2 and its next EIP-2612 nonce, cached together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Approval {
    allowance: U256,
    permit_nonce: Option<U256>,
}

/// What an `upto` funds lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UptoFunds {
    /// The payer's balance (net of levy's settlements), its allowance to Permit2 and the
    /// EIP-2612 nonce its next permit must carry.
    Known {
        balance: U256,
        allowance: U256,
        permit_nonce: Option<U256>,
    },
    /// The chain could not be read in time.
    Unknown,
    /// As many admission reads of this chain as allowed were running: none was started.
    Busy,
}

impl Funds {
    pub fn new(config: FundsConfig) -> Self {
        Self {
            config,
            balances: moka::future::Cache::builder()
                .max_capacity(1_000_000)
                .expire_after(BalanceExpiry {
                    ttl: config.ttl,
                    empty_ttl: config.empty_ttl,
                })
                .build(),
            denied: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .expire_after(DenyExpiry)
                .build(),
            signatures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            allowances: moka::future::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(config.empty_ttl)
                .build(),
            gates: Mutex::new(HashMap::new()),
            budgets: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(120))
                .build(),
        }
    }

    /// A permit for one admission read of chain `chain_id`, held while the read runs;
    /// [`ReadError::Busy`] (and counted) when `max_concurrent_reads` are running there.
    pub fn read_permit(&self, chain_id: u64) -> Result<OwnedSemaphorePermit, ReadError> {
        let gate = {
            let mut gates = lock(&self.gates);
            Arc::clone(
                gates
                    .entry(chain_id)
                    .or_insert_with(|| Arc::new(Semaphore::new(self.config.max_concurrent_reads))),
            )
        };
        gate.try_acquire_owned().map_err(|_| {
            crate::metrics::metrics()
                .admission_reads_refused
                .with_label_values(&["busy"])
                .inc();
            ReadError::Busy
        })
    }

    /// Takes one signature check on chain from `client`'s budget; `false` when it has none
    /// left this minute.
    pub fn take_signature_check(&self, client: IpAddr) -> bool {
        let capacity = f64::from(self.config.signature_checks_per_minute);
        let bucket = self.budgets.get_with(client, || {
            Arc::new(Mutex::new(Bucket {
                tokens: capacity,
                at: Instant::now(),
            }))
        });
        let mut bucket = lock(&bucket);
        let now = Instant::now();
        let refill = now.duration_since(bucket.at).as_secs_f64() * capacity / 60.0;
        bucket.tokens = (bucket.tokens + refill).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// An `upto` payer's balance, Permit2 allowance and EIP-2612 nonce for `key`, from the
    /// caches or read by `read` within the read deadline.
    pub async fn upto_view<F>(&self, key: FundsKey, read: F) -> UptoFunds
    where
        F: std::future::Future<Output = Result<UptoPayerState, ReadError>> + Send,
    {
        if let (Some(balance), Some(approval)) = (
            self.balances.get(&key).await,
            self.allowances.get(&key).await,
        ) {
            return UptoFunds::Known {
                balance: balance.get(),
                allowance: approval.allowance,
                permit_nonce: approval.permit_nonce,
            };
        }
        match tokio::time::timeout(self.config.read_timeout, read).await {
            Ok(Ok(state)) => {
                let approval = Approval {
                    allowance: state.allowance,
                    permit_nonce: state.permit_nonce,
                };
                self.allowances.insert(key, approval).await;
                let balance = self
                    .balances
                    .get_with(key, async move {
                        Arc::new(Balance::new(state.balance, 0, B256::ZERO, false))
                    })
                    .await;
                UptoFunds::Known {
                    balance: balance.get(),
                    allowance: approval.allowance,
                    permit_nonce: approval.permit_nonce,
                }
            }
            Ok(Err(ReadError::Busy)) => UptoFunds::Busy,
            Ok(Err(ReadError::Failed)) | Err(_) => UptoFunds::Unknown,
        }
    }

    /// The chain's earlier verdict on a contract wallet's signature, if any.
    pub fn signature_verdict(&self, key: &SignatureKey) -> Option<bool> {
        self.signatures.get(key)
    }

    /// Remembers the chain's verdict on a contract wallet's signature.
    pub fn remember_signature(&self, key: SignatureKey, valid: bool) {
        self.signatures.insert(key, valid);
    }

    /// The payer's balance for `key`, from the cache or read by `read` (`(balance, used)` of
    /// the balance and `nonce`'s authorization state) within the read deadline.
    pub async fn view<F>(&self, key: FundsKey, nonce: B256, read: F) -> FundsView
    where
        F: std::future::Future<Output = Result<(U256, bool, u64), ReadError>> + Send,
    {
        if let Some(balance) = self.balances.get(&key).await {
            return self.seen(&balance, nonce);
        }
        let timeout = self.config.read_timeout;
        let loaded = self
            .balances
            .try_get_with(key, async move {
                match tokio::time::timeout(timeout, read).await {
                    Ok(Ok((value, used, block))) => {
                        Ok(Arc::new(Balance::new(value, block, nonce, used)))
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(ReadError::Failed),
                }
            })
            .await;
        match loaded {
            Ok(balance) => self.seen(&balance, nonce),
            Err(e) if *e == ReadError::Busy => FundsView::Busy,
            Err(_) => FundsView::Unknown,
        }
    }

    fn seen(&self, balance: &Balance, nonce: B256) -> FundsView {
        if balance.first_nonce == nonce && balance.first_nonce_used {
            FundsView::AuthorizationUsed
        } else {
            FundsView::Known {
                balance: balance.get(),
                block: balance.block,
            }
        }
    }

    /// A payment settled: its value left the payer's cached balance.
    pub async fn spent(&self, key: FundsKey, amount: U256) {
        if let Some(balance) = self.balances.get(&key).await {
            balance.spend(amount);
        }
    }

    /// Forgets a payer's cached balance (it turned out wrong).
    pub async fn forget(&self, key: FundsKey) {
        self.balances.invalidate(&key).await;
    }

    /// Puts a payer on the deny list until `until` (unix seconds).
    pub fn deny(&self, payer: Address, reason: &'static str, until: u64) {
        self.denied.insert(payer, Denial { reason, until });
    }

    /// Whether a payer is refused, and why.
    pub fn denied(&self, payer: Address, now: u64) -> Option<Denial> {
        self.denied.get(&payer).filter(|d| d.until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn funds() -> Funds {
        Funds::new(FundsConfig {
            check: true,
            ttl: Duration::from_secs(30),
            empty_ttl: Duration::from_secs(2),
            read_timeout: Duration::from_millis(200),
            on_rpc_error: OnRpcError::ServeWithinCaps,
            deny_for: Duration::from_secs(60),
            max_concurrent_reads: 1,
            signature_checks_per_minute: 2,
        })
    }

    const KEY: FundsKey = (1, Address::repeat_byte(1), Address::repeat_byte(2));

    #[tokio::test]
    async fn a_warm_balance_answers_without_reading_and_settlements_reduce_it() {
        let funds = funds();
        let nonce = B256::repeat_byte(7);
        let first = funds
            .view(KEY, nonce, async {
                Ok::<_, ReadError>((U256::from(100), false, 7))
            })
            .await;
        assert_eq!(
            first,
            FundsView::Known {
                balance: U256::from(100),
                block: 7,
            }
        );
        let warm = funds
            .view(KEY, B256::repeat_byte(8), async {
                panic!("a warm entry must not be read again");
                #[allow(unreachable_code)]
                Ok::<(U256, bool, u64), ReadError>((U256::ZERO, false, 0))
            })
            .await;
        assert_eq!(
            warm,
            FundsView::Known {
                balance: U256::from(100),
                block: 7,
            }
        );
        funds.spent(KEY, U256::from(30)).await;
        let after = funds
            .view(KEY, nonce, async {
                Err::<(U256, bool, u64), _>(ReadError::Failed)
            })
            .await;
        assert_eq!(
            after,
            FundsView::Known {
                balance: U256::from(70),
                block: 7,
            }
        );
    }

    #[tokio::test]
    async fn a_used_authorization_and_a_failed_read_are_told_apart() {
        let funds = funds();
        let nonce = B256::repeat_byte(7);
        let used = funds
            .view(KEY, nonce, async {
                Ok::<_, ReadError>((U256::from(5), true, 7))
            })
            .await;
        assert_eq!(used, FundsView::AuthorizationUsed);
        let other = (2, KEY.1, KEY.2);
        let failed = funds
            .view(other, nonce, async {
                Err::<(U256, bool, u64), _>(ReadError::Failed)
            })
            .await;
        assert_eq!(failed, FundsView::Unknown);
        let slow = funds
            .view(other, nonce, async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, ReadError>((U256::from(5), false, 7))
            })
            .await;
        assert_eq!(slow, FundsView::Unknown);
    }

    #[tokio::test]
    async fn a_read_past_the_concurrency_cap_is_busy_and_starts_nothing() {
        let funds = funds();
        let held = funds.read_permit(1).expect("the one permit");
        let gated = |funds: &Funds, chain_id| {
            let permit = funds.read_permit(chain_id);
            async move {
                let _permit = permit?;
                Ok((U256::from(5), false, 7))
            }
        };
        let busy = funds.view(KEY, B256::ZERO, gated(&funds, 1)).await;
        assert_eq!(busy, FundsView::Busy);
        // Another chain has a gate of its own.
        let other = (2, KEY.1, KEY.2);
        let read = funds.view(other, B256::ZERO, gated(&funds, 2)).await;
        assert_eq!(
            read,
            FundsView::Known {
                balance: U256::from(5),
                block: 7,
            }
        );
        drop(held);
        let after = funds.view(KEY, B256::ZERO, gated(&funds, 1)).await;
        assert_eq!(
            after,
            FundsView::Known {
                balance: U256::from(5),
                block: 7,
            }
        );
    }

    #[test]
    fn a_client_past_its_signature_budget_is_refused_while_others_are_not() {
        let funds = funds();
        let (greedy, other) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        assert!(funds.take_signature_check(greedy));
        assert!(funds.take_signature_check(greedy));
        assert!(!funds.take_signature_check(greedy));
        assert!(funds.take_signature_check(other));
    }

    #[test]
    fn a_denied_payer_is_refused_until_the_entry_lapses() {
        let funds = funds();
        let payer = Address::repeat_byte(9);
        let until = crate::clock::unix_now() + 100;
        funds.deny(payer, "insufficient_balance", until);
        assert_eq!(
            funds.denied(payer, until - 1).map(|d| d.reason),
            Some("insufficient_balance")
        );
        assert_eq!(funds.denied(payer, until), None);
        assert_eq!(funds.denied(Address::repeat_byte(3), 0), None);
    }
}
