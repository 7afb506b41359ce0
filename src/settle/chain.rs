//! One EVM chain as the settlement engine sees it: reads through Multicall3 `aggregate3`
//! (each payment's nonce state and `balanceOf`, and the block they are from), the batch
//! simulated as the settler would send it and split until the payments that break it run
//! alone, a signed batch transaction built by the payments' scheme ([`crate::scheme`]:
//! `transferWithAuthorization` calls through `aggregate3` for `exact`, `LevyBatcher.settle`
//! for `upto`), the chain head it follows ([`head`]), receipts, and the scheme's use and
//! cancel events for reconciliation. Every RPC call has a timeout, and every RPC error is
//! sorted by what it says about a payment ([`ChainError`]).

mod error;
mod fate;
mod head;
mod simulate;

pub use error::ChainError;

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip1559::Eip1559Estimation;
use alloy::eips::eip2718::Encodable2718;
use alloy::eips::{BlockId, BlockNumberOrTag};
use alloy::network::{TransactionBuilder, TxSignerSync};
use alloy::primitives::{Address, Bytes, TxKind, B256, U256};
use alloy::providers::{Provider, ProviderBuilder, RootProvider};
use alloy::rpc::types::simulate::{SimBlock, SimulatePayload};
use alloy::rpc::types::state::{AccountOverride, StateOverride};
use alloy::rpc::types::{Filter, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol;
use alloy::sol_types::{SolCall, SolValue};
use alloy::transports::TransportError;

use super::funds::UptoPayerState;
use super::PaymentRecord;
use crate::scheme::exact::calls::IEip3009;
use crate::scheme::upto::calls as upto;
use crate::scheme::{self, IMulticall3, Targets, EXACT};

/// The creation code of the project's `SigValidator` (contracts/src), run without deploying
/// it: its constructor answers whether a signature is valid for a signer, ECDSA, EIP-1271 or
/// ERC-6492.
static SIG_VALIDATOR: Undeployed = Undeployed {
    name: "SigValidator",
    code: std::sync::LazyLock::new(|| {
        creation_code(include_str!("../../contracts/out/SigValidator.json"))
    }),
};

/// The creation code of the project's `CodeSizes` (contracts/src), run without deploying
/// it: the code size of each of a batch's payers in one call.
static CODE_SIZES: Undeployed = Undeployed {
    name: "CodeSizes",
    code: std::sync::LazyLock::new(|| {
        creation_code(include_str!("../../contracts/out/CodeSizes.json"))
    }),
};

/// A contract of the project's whose constructor answers a question, run in an `eth_call`
/// without being deployed.
struct Undeployed {
    name: &'static str,
    code: std::sync::LazyLock<Option<Bytes>>,
}

/// The creation code in a contracts/out artifact.
fn creation_code(artifact: &str) -> Option<Bytes> {
    let artifact: serde_json::Value = serde_json::from_str(artifact).ok()?;
    artifact["bytecode"].as_str()?.parse().ok()
}

/// How far back reconciliation looks for an authorization's events.
const LOG_LOOKBACK_BLOCKS: u64 = 9_000;

/// How often the chain head is read at most while batches are in flight and nobody waits.
pub const HEAD_EVERY: Duration = head::FRESH;

/// What the chain says about one authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationFate {
    /// Not used on chain (yet).
    Unused,
    /// Transferred, in this transaction.
    Used(B256),
    /// Canceled by the payer.
    Canceled,
    /// Marked used, but no event was found (the logs may have been pruned).
    UsedUnknown,
}

/// The pre-batch state of one payment's authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precheck {
    pub used: bool,
    /// `None` when the read failed: unknown, not zero.
    pub balance: Option<U256>,
}

/// A payer's account as the token sees it when it checks a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    /// No code: the token recovers the signer (as levy did inline).
    Key,
    /// Code (a contract wallet or an EIP-7702 delegation): the token asks it (EIP-1271),
    /// and its answer can differ from levy's.
    Code,
}

/// What simulating a payment's transfer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// It transferred in a simulation that ran.
    Succeeds,
    /// It failed in a simulation of this transfer alone: the node's evidence that the token
    /// (or the payer's account) refuses it.
    Refused,
    /// No simulation that could tell finished (RPC trouble): nothing is known.
    Unknown,
}

/// [`Chain::simulate_transfers`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Simulated {
    /// One per payment, in order.
    pub transfers: Vec<Transfer>,
    /// The gas the whole batch used in its one simulation, when every transfer succeeded in
    /// it and the node reports gas (`eth_simulateV1`): [`Chain::sign_batch`] sizes the same
    /// batch from it instead of estimating its gas again.
    pub gas: Option<u64>,
    /// How many simulations it took (1 unless something in the batch failed).
    pub runs: usize,
}

/// One simulation of a batch call.
struct SimulationRun {
    /// `None` when the call reverted as a whole.
    output: Option<Bytes>,
    gas: Option<u64>,
}

/// A mined transaction, reduced to what settlement needs.
#[derive(Debug, Clone)]
pub struct Mined {
    pub success: bool,
    pub gas_used: u64,
    /// `(token, authorizer, nonce)` of every `AuthorizationUsed` in the receipt.
    pub used: Vec<(Address, Address, B256)>,
}

/// A signed batch transaction, not yet broadcast.
#[derive(Debug, Clone)]
pub struct SignedBatch {
    pub hash: B256,
    pub raw: Bytes,
    pub fees: Fees,
}

/// The EIP-1559 fees of a transaction, in wei per gas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Fees {
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}

/// One chain's RPC endpoint, settler key and batch-call contract.
pub struct Chain {
    provider: RootProvider,
    signer: PrivateKeySigner,
    chain_id: u64,
    multicall: Address,
    /// levy's `LevyBatcher`, which settles `upto` payments.
    batcher: Option<Address>,
    timeout: Duration,
    /// The node refused `eth_simulateV1`: batches are simulated with `eth_call` and their
    /// gas estimated with `eth_estimateGas` instead.
    no_simulate: AtomicBool,
    /// Appended to every batch's calldata (ERC-8021 attribution); empty: nothing.
    builder_code: Vec<u8>,
    /// The last fee estimate: a batch simulated and signed within a second of it uses it
    /// instead of asking again.
    fees: Remembered<Eip1559Estimation>,
    /// The latest block's gas limit (it moves slowly), read once a minute.
    block_gas: Remembered<u64>,
    /// The newest block's number as levy follows it ([`head::HeadClock`]): the batches in
    /// flight on this chain share one read per round instead of asking a receipt each.
    head: Mutex<head::HeadClock>,
    /// The most gas per payment an `exact` batch used when simulated whole (0: none yet):
    /// what a batch the pre-check decided is given without a simulation of its own.
    exact_gas_per_payment: AtomicU64,
}

/// A value read from the node, used for `fresh_for` after the read.
struct Remembered<T> {
    fresh_for: Duration,
    read: Mutex<Option<(Instant, T)>>,
}

impl<T: Copy> Remembered<T> {
    fn new(fresh_for: Duration) -> Self {
        Self {
            fresh_for,
            read: Mutex::new(None),
        }
    }

    /// The value, while it is fresh.
    fn get(&self) -> Option<T> {
        crate::sync::lock(&self.read)
            .filter(|(at, _)| at.elapsed() < self.fresh_for)
            .map(|(_, value)| value)
    }

    /// Keeps `value`, read now.
    fn keep(&self, value: T) -> T {
        *crate::sync::lock(&self.read) = Some((Instant::now(), value));
        value
    }
}

impl Chain {
    pub fn new(
        rpc_url: &str,
        signer: PrivateKeySigner,
        chain_id: u64,
        multicall: Address,
        batcher: Option<Address>,
        timeout: Duration,
    ) -> Result<Self, ChainError> {
        Ok(Self {
            provider: http_provider(rpc_url)?,
            signer,
            chain_id,
            multicall,
            batcher,
            timeout,
            no_simulate: AtomicBool::new(false),
            builder_code: Vec::new(),
            fees: Remembered::new(Duration::from_secs(1)),
            block_gas: Remembered::new(Duration::from_secs(60)),
            head: Mutex::new(head::HeadClock::default()),
            exact_gas_per_payment: AtomicU64::new(0),
        })
    }

    /// The contracts this chain's payments settle through.
    fn targets(&self) -> Targets {
        Targets {
            multicall: self.multicall,
            batcher: self.batcher,
        }
    }

    /// Where a batch of these payments (all of one scheme) is sent, and its calldata.
    pub fn batch_call(&self, payments: &[PaymentRecord]) -> Result<(Address, Bytes), ChainError> {
        let scheme = payments.first().map_or(&EXACT as _, PaymentRecord::scheme);
        let (target, data) = scheme.batch_call(payments, &self.targets())?;
        if self.builder_code.is_empty() {
            return Ok((target, data));
        }
        let mut data = data.to_vec();
        data.extend_from_slice(&self.builder_code);
        Ok((target, data.into()))
    }

    /// Appends `suffix` (an ERC-8021 attribution) to every batch this chain signs.
    pub fn with_builder_code(mut self, suffix: Vec<u8>) -> Self {
        self.builder_code = suffix;
        self
    }

    /// A payer's balance of `token`, its allowance to Permit2 and its EIP-2612 nonce, in one
    /// multicall read.
    pub async fn upto_payer_state(
        &self,
        token: Address,
        payer: Address,
    ) -> Result<UptoPayerState, ChainError> {
        let calls = vec![
            balance_call(token, payer, false),
            IMulticall3::Call3 {
                target: token,
                allowFailure: false,
                callData: upto::permit2_allowance_call(payer).into(),
            },
            // A token without EIP-2612 has no `nonces`: then no permit can be used.
            IMulticall3::Call3 {
                target: token,
                allowFailure: true,
                callData: upto::permit_nonce_call(payer).into(),
            },
        ];
        let results = self.read_many(calls).await?;
        let [balance, allowance, nonce] = results.as_slice() else {
            return Err(ChainError::Decode(
                "aggregate3 returned the wrong number of results".into(),
            ));
        };
        let balance = IEip3009::balanceOfCall::abi_decode_returns(&balance.returnData)
            .map_err(|e| ChainError::Decode(format!("balanceOf: {e}")))?;
        let allowance = upto::decode_allowance(&allowance.returnData)
            .ok_or_else(|| ChainError::Decode("allowance".into()))?;
        let permit_nonce = nonce
            .success
            .then(|| upto::decode_permit_nonce(&nonce.returnData))
            .flatten();
        Ok(UptoPayerState {
            balance,
            allowance,
            permit_nonce,
        })
    }

    /// The settler's address.
    pub fn settler(&self) -> Address {
        self.signer.address()
    }

    /// The node's EIP-1559 fee estimate, read at most once a second (a batch's simulation
    /// and its signing a moment later share one read).
    pub(super) async fn fee_estimate(&self) -> Result<Eip1559Estimation, ChainError> {
        if let Some(estimate) = self.fees.get() {
            return Ok(estimate);
        }
        let estimate = self
            .rpc("eth_feeHistory", self.provider.estimate_eip1559_fees())
            .await?;
        Ok(self.fees.keep(estimate))
    }

    /// The latest block's gas limit, read at most once a minute.
    async fn block_gas_limit(&self) -> Result<u64, ChainError> {
        if let Some(gas) = self.block_gas.get() {
            return Ok(gas);
        }
        let block = self
            .rpc(
                "eth_getBlockByNumber",
                self.provider.get_block_by_number(BlockNumberOrTag::Latest),
            )
            .await?
            .ok_or_else(|| ChainError::Decode("no latest block".into()))?;
        Ok(self.block_gas.keep(block.header.gas_limit))
    }

    /// Runs one RPC call under the chain's timeout, its error sorted by
    /// [`ChainError::classify`].
    async fn rpc<T>(
        &self,
        call: &'static str,
        fut: impl IntoFuture<Output = Result<T, TransportError>>,
    ) -> Result<T, ChainError> {
        timed(call, self.timeout, fut).await
    }

    /// Whether each payment's authorization is used and the payer's balance, in one
    /// multicall read at the latest block, and which block that was (0 when the multicall
    /// cannot say).
    pub async fn precheck(
        &self,
        payments: &[PaymentRecord],
    ) -> Result<(Vec<Precheck>, u64), ChainError> {
        let Some(scheme) = payments.first().map(PaymentRecord::scheme) else {
            return Ok((Vec::new(), 0));
        };
        let mut calls = Vec::with_capacity(payments.len() * 2 + 1);
        calls.push(self.block_number_call());
        for p in payments {
            let read = scheme.used_read(p);
            calls.push(IMulticall3::Call3 {
                target: read.target,
                allowFailure: true,
                callData: read.data,
            });
            calls.push(balance_call(p.asset, p.payer, true));
        }
        let reads = self.read_many(calls).await?;
        let Some((block, reads)) = reads.split_first() else {
            return Err(ChainError::Decode("aggregate3 returned no results".into()));
        };
        let checks = reads
            .chunks(2)
            .zip(payments)
            .map(|(pair, p)| Precheck {
                // A failed read counts as "used" so the payment is reconciled, never sent blind.
                used: !pair[0].success || scheme.is_used(p, &pair[0].returnData).unwrap_or(true),
                balance: read_balance(&pair[1]),
            })
            .collect();
        Ok((checks, read_block_number(block)))
    }

    /// `getBlockNumber()` of the multicall itself, as one call of a multicall read (allowed
    /// to fail: a multicall without it reads as block 0, "unknown").
    fn block_number_call(&self) -> IMulticall3::Call3 {
        IMulticall3::Call3 {
            target: self.multicall,
            allowFailure: true,
            callData: IMulticall3::getBlockNumberCall {}.abi_encode().into(),
        }
    }

    /// One `aggregate3` read through the multicall contract at the latest block; the answer
    /// must hold one result per call.
    async fn read_many(
        &self,
        calls: Vec<IMulticall3::Call3>,
    ) -> Result<Vec<IMulticall3::Result>, ChainError> {
        let expected = calls.len();
        let request = TransactionRequest::default()
            .to(self.multicall)
            .input(IMulticall3::aggregate3Call { calls }.abi_encode().into());
        let output = self.call_latest(request).await?;
        let results = IMulticall3::aggregate3Call::abi_decode_returns(&output)
            .map_err(|e| ChainError::Decode(format!("aggregate3: {e}")))?;
        if results.len() != expected {
            return Err(ChainError::Decode(
                "aggregate3 returned the wrong number of results".into(),
            ));
        }
        Ok(results)
    }

    /// An `eth_call` at the latest block (alloy's default is `pending`, which some nodes
    /// answer ahead of the receipts they serve).
    async fn call_latest(&self, request: TransactionRequest) -> Result<Bytes, ChainError> {
        self.rpc(
            "eth_call",
            self.provider.call(request).block(BlockId::latest()),
        )
        .await
    }

    /// A payer's token balance, whether `nonce`'s authorization is used (or canceled), and
    /// the block they were read at (0 when the multicall cannot say), in one multicall read
    /// at the latest block.
    pub async fn payer_state(
        &self,
        asset: Address,
        payer: Address,
        nonce: B256,
    ) -> Result<(U256, bool, u64), ChainError> {
        let calls = vec![
            balance_call(asset, payer, false),
            IMulticall3::Call3 {
                target: asset,
                allowFailure: false,
                callData: IEip3009::authorizationStateCall {
                    authorizer: payer,
                    nonce,
                }
                .abi_encode()
                .into(),
            },
            self.block_number_call(),
        ];
        let results = self.read_many(calls).await?;
        let [balance, state, block] = results.as_slice() else {
            return Err(ChainError::Decode(
                "aggregate3 returned the wrong number of results".into(),
            ));
        };
        let balance = IEip3009::balanceOfCall::abi_decode_returns(&balance.returnData)
            .map_err(|e| ChainError::Decode(format!("balanceOf: {e}")))?;
        let used = IEip3009::authorizationStateCall::abi_decode_returns(&state.returnData)
            .map_err(|e| ChainError::Decode(format!("authorizationState: {e}")))?;
        Ok((balance, used, read_block_number(block)))
    }

    /// Whether `signature` is `signer`'s over `digest`: ECDSA, EIP-1271 (a deployed contract
    /// wallet) or ERC-6492 (a wallet deployed only inside the call), in one `eth_call` of the
    /// undeployed `SigValidator` at the latest block.
    pub async fn signature_valid(
        &self,
        signer: Address,
        digest: B256,
        signature: &[u8],
    ) -> Result<bool, ChainError> {
        let args = (signer, digest, Bytes::copy_from_slice(signature)).abi_encode_params();
        let output = self.call_undeployed(&SIG_VALIDATOR, args).await?;
        Ok(output.as_ref() == [1u8])
    }

    /// Runs `contract`'s creation code with `args` (ABI-encoded constructor arguments)
    /// appended, in an `eth_call` at the latest block: what its constructor returns.
    async fn call_undeployed(
        &self,
        contract: &Undeployed,
        args: Vec<u8>,
    ) -> Result<Bytes, ChainError> {
        let code = contract.code.as_ref().ok_or_else(|| {
            ChainError::Decode(format!("the {} artifact is unreadable", contract.name))
        })?;
        let mut data = code.to_vec();
        data.extend(args);
        let request = TransactionRequest::default()
            .input(Bytes::from(data).into())
            .into_create();
        self.call_latest(request).await
    }

    /// Whether each of `accounts` has code, in one `eth_call` of the undeployed `CodeSizes`
    /// at the latest block (no account's code is run).
    pub async fn accounts(&self, accounts: &[Address]) -> Result<Vec<Account>, ChainError> {
        let output = self
            .call_undeployed(&CODE_SIZES, (accounts.to_vec(),).abi_encode_params())
            .await?;
        let sizes = <Vec<U256>>::abi_decode(&output)
            .map_err(|e| ChainError::Decode(format!("CodeSizes: {e}")))?;
        if sizes.len() != accounts.len() {
            return Err(ChainError::Decode(
                "CodeSizes returned the wrong number of sizes".into(),
            ));
        }
        Ok(sizes
            .iter()
            .map(|size| {
                if size.is_zero() {
                    Account::Key
                } else {
                    Account::Code
                }
            })
            .collect())
    }

    /// Builds and signs one transaction that transfers every payment through `aggregate3`.
    ///
    /// `floor` is the fees of a transaction this one replaces (same nonce, same calls): each
    /// fee is raised to at least a quarter above it, so nodes accept the replacement.
    /// `simulated` is the gas these same payments used in their pre-check's simulation
    /// ([`Simulated::gas`]); without it the gas is estimated (`eth_estimateGas`, which a
    /// node answers by running the batch many times over). A
    /// batch whose gas would exceed most of a block is refused with
    /// [`ChainError::TooMuchGas`]: split it.
    pub async fn sign_batch(
        &self,
        payments: &[PaymentRecord],
        nonce: u64,
        floor: Option<Fees>,
        simulated: Option<u64>,
    ) -> Result<SignedBatch, ChainError> {
        let (target, data) = self.batch_call(payments)?;
        let gas_limit = match simulated {
            // Gas used is what is left after refunds (at most a fifth of it) and the inner
            // calls need 64/63 of theirs at hand: half again covers both.
            Some(used) => used + used / 2 + 21_000,
            None => {
                let estimate_request = TransactionRequest::default()
                    .from(self.settler())
                    .to(target)
                    .input(data.clone().into());
                let gas = self
                    .rpc(
                        "eth_estimateGas",
                        self.provider.estimate_gas(estimate_request),
                    )
                    .await?;
                gas + gas / 4 + 21_000
            }
        };
        let block_gas = self.block_gas_limit().await?;
        if gas_limit > block_gas / 10 * 9 {
            return Err(ChainError::TooMuchGas {
                gas: gas_limit,
                block: block_gas,
            });
        }
        let estimate = self.fee_estimate().await?;
        let bump = |previous: u128| previous + previous / 4 + 1;
        let fees = match floor {
            None => Fees {
                max_fee_per_gas: estimate.max_fee_per_gas,
                max_priority_fee_per_gas: estimate.max_priority_fee_per_gas,
            },
            Some(prev) => {
                let priority = estimate
                    .max_priority_fee_per_gas
                    .max(bump(prev.max_priority_fee_per_gas));
                Fees {
                    max_fee_per_gas: estimate
                        .max_fee_per_gas
                        .max(bump(prev.max_fee_per_gas))
                        .max(priority),
                    max_priority_fee_per_gas: priority,
                }
            }
        };
        let mut tx = TxEip1559 {
            chain_id: self.chain_id,
            nonce,
            gas_limit,
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            to: TxKind::Call(target),
            value: U256::ZERO,
            access_list: Default::default(),
            input: data,
        };
        let signature = self
            .signer
            .sign_transaction_sync(&mut tx)
            .map_err(|e| ChainError::Signing(e.to_string()))?;
        let envelope = TxEnvelope::from(tx.into_signed(signature));
        Ok(SignedBatch {
            hash: *envelope.tx_hash(),
            raw: envelope.encoded_2718().into(),
            fees,
        })
    }

    /// The chain id transactions are signed for.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// Broadcasts a signed transaction. Re-broadcasting the same bytes is harmless.
    pub async fn broadcast(&self, raw: &[u8]) -> Result<(), ChainError> {
        let sent = self
            .rpc(
                "eth_sendRawTransaction",
                self.provider.send_raw_transaction(raw),
            )
            .await;
        // A chain that mines at once has a newer block now: read the head again.
        crate::sync::lock(&self.head).expire();
        sent.map(|_| ())
    }

    /// The newest block's number (`eth_blockNumber`), read again only when a newer block
    /// may be out ([`head::HeadClock`]), and at most `every` ([`HEAD_EVERY`] unless a payer
    /// waits).
    pub async fn head(&self, every: Duration) -> Result<u64, ChainError> {
        if let Some(head) = crate::sync::lock(&self.head).fresh(Instant::now(), every) {
            return Ok(head);
        }
        self.read_head().await
    }

    async fn read_head(&self) -> Result<u64, ChainError> {
        let head = self
            .rpc("eth_blockNumber", self.provider.get_block_number())
            .await?;
        crate::sync::lock(&self.head).saw(head, Instant::now());
        Ok(head)
    }

    /// Reads the head unless it was read within `every`, whatever levy broadcast since: to
    /// learn the chain's block clock where nothing else reads the head. A failed read is
    /// left for the next time.
    pub async fn learn_clock(&self, every: Duration) {
        if !crate::sync::lock(&self.head).read_within(Instant::now(), every) {
            let _ = self.read_head().await;
        }
    }

    /// Whether this chain's blocks come on a steady clock of a second or more, as levy has
    /// seen them come.
    pub fn on_a_clock(&self) -> bool {
        crate::sync::lock(&self.head).on_a_clock()
    }

    /// The newest block's number as last read, however long ago (`None`: never read): a
    /// transaction sent now cannot be in that block or an older one.
    pub fn last_head(&self) -> Option<u64> {
        crate::sync::lock(&self.head).last()
    }

    /// The receipt of a transaction, if mined.
    pub async fn receipt(&self, hash: B256) -> Result<Option<Mined>, ChainError> {
        let Some(receipt) = self
            .rpc(
                "eth_getTransactionReceipt",
                self.provider.get_transaction_receipt(hash),
            )
            .await?
        else {
            return Ok(None);
        };
        let targets = self.targets();
        let used = receipt
            .inner
            .logs()
            .iter()
            .filter_map(|log| scheme::used_in_log(log.address(), log.topics(), &targets))
            .collect();
        Ok(Some(Mined {
            success: receipt.status(),
            gas_used: receipt.gas_used,
            used,
        }))
    }

    /// The settler's next nonce, counting pending transactions.
    pub async fn pending_nonce(&self) -> Result<u64, ChainError> {
        self.rpc(
            "eth_getTransactionCount",
            self.provider
                .get_transaction_count(self.settler())
                .pending(),
        )
        .await
    }

    /// The settler's nonce in the latest block.
    pub async fn mined_nonce(&self) -> Result<u64, ChainError> {
        self.rpc(
            "eth_getTransactionCount",
            self.provider.get_transaction_count(self.settler()).latest(),
        )
        .await
    }

    /// The settler's native balance, for gas.
    pub async fn gas_balance(&self) -> Result<U256, ChainError> {
        self.rpc("eth_getBalance", self.provider.get_balance(self.settler()))
            .await
    }
}

/// A plain JSON-RPC client of `rpc_url` (no fillers: levy sets nonce, gas and fees itself).
fn http_provider(rpc_url: &str) -> Result<RootProvider, ChainError> {
    let url = rpc_url
        .parse()
        .map_err(|e| ChainError::Url(format!("{e}")))?;
    Ok(ProviderBuilder::new()
        .disable_recommended_fillers()
        .connect_http(url)
        .root()
        .clone())
}

/// The chain id an RPC endpoint answers for, read with a client of its own (so that no
/// connection outlives the runtime it is called on).
pub async fn chain_id_at(rpc_url: &str, timeout: Duration) -> Result<u64, ChainError> {
    let provider = http_provider(rpc_url)?;
    timed("eth_chainId", timeout, provider.get_chain_id()).await
}

/// Runs one RPC call `call` under `timeout` (counted in `levy_rpc_calls_total`), its error
/// sorted by [`ChainError::classify`].
async fn timed<T>(
    call: &'static str,
    timeout: Duration,
    fut: impl IntoFuture<Output = Result<T, TransportError>>,
) -> Result<T, ChainError> {
    crate::metrics::metrics()
        .rpc_calls
        .with_label_values(&[call])
        .inc();
    match tokio::time::timeout(timeout, fut.into_future()).await {
        Err(_) => Err(ChainError::Timeout(call)),
        Ok(Err(e)) => Err(ChainError::classify(call, &e)),
        Ok(Ok(v)) => Ok(v),
    }
}

sol! {
    interface ILevyBatcher {
        function owner() external view returns (address);
    }
}

/// The owner of the `LevyBatcher` at `batcher` (the only key it lets settle), read with a
/// client of its own.
pub async fn batcher_owner_at(
    rpc_url: &str,
    batcher: Address,
    timeout: Duration,
) -> Result<Address, ChainError> {
    let provider = http_provider(rpc_url)?;
    let request = TransactionRequest::default()
        .to(batcher)
        .input(ILevyBatcher::ownerCall {}.abi_encode().into());
    let output = timed("eth_call", timeout, provider.call(request)).await?;
    ILevyBatcher::ownerCall::abi_decode_returns(&output)
        .map_err(|e| ChainError::Decode(format!("owner(): {e}")))
}

/// `balanceOf(payer)` on `token`, as one call of a multicall read.
fn balance_call(token: Address, payer: Address, allow_failure: bool) -> IMulticall3::Call3 {
    IMulticall3::Call3 {
        target: token,
        allowFailure: allow_failure,
        callData: IEip3009::balanceOfCall { account: payer }
            .abi_encode()
            .into(),
    }
}

/// The balance a `balanceOf` call of a multicall read answered; `None` when it failed
/// (unknown, not zero).
fn read_balance(result: &IMulticall3::Result) -> Option<U256> {
    if result.success {
        IEip3009::balanceOfCall::abi_decode_returns(&result.returnData).ok()
    } else {
        None
    }
}

/// The block number a `getBlockNumber` call of a multicall read answered; 0 when it failed.
fn read_block_number(result: &IMulticall3::Result) -> u64 {
    if !result.success {
        return 0;
    }
    IMulticall3::getBlockNumberCall::abi_decode_returns(&result.returnData)
        .ok()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}
