//! x402 `batch-settlement` channels, the pure part: the channel and voucher types and their
//! EIP-712 hashes (as the escrow contract and the official clients compute them), the
//! client's `deposit`, `voucher` and `refund` payloads, the inline checks of a payload
//! against what levy offered, and the ledger of one channel: which voucher pays for the
//! next request, what levy may claim, what the client is told. No I/O, no clock.
//!
//! A channel is the escrow of one payer for one receiver. Its ledger has four amounts:
//! `balance` (deposited, less refunds and withdrawals; claimed funds stay counted),
//! `charged` (what levy earned: the cumulative price of the requests it served), `unearned`
//! (the unused part of metered calls' ceilings) and `signed_max` (the payer's latest
//! voucher: "the receiver may claim up to this much in all"). Each request comes with a
//! voucher for exactly `charged + unearned + price` (the protocol's cumulative amount);
//! levy claims `charged` on chain later, and a refund returns everything else.

use std::str::FromStr;

use alloy_primitives::{b256, keccak256, Address, Bytes, Signature, B256, U256};
use alloy_sol_types::{sol, SolValue};
use serde::{Deserialize, Serialize};

use crate::verify::{parse_nonce as parse_b256, parse_time, typed_digest};
use crate::x402::{AcceptedRequirements, Number, SCHEME_BATCH};

/// `x402BatchSettlement`'s canonical address.
pub const BATCH_SETTLEMENT_ADDRESS: Address =
    alloy_primitives::address!("4020074e9dF2ce1deE5A9C1b5c3f541D02a10003");
/// The canonical `ERC3009DepositCollector`: the `to` of every ERC-3009 deposit.
pub const ERC3009_DEPOSIT_COLLECTOR_ADDRESS: Address =
    alloy_primitives::address!("4020806089470a89826cB9fB1f4059150b550004");
/// The escrow's bounds on a channel's withdraw delay, in seconds.
pub const MIN_WITHDRAW_DELAY: u64 = 900;
pub const MAX_WITHDRAW_DELAY: u64 = 2_592_000;

/// `keccak256("ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)")`.
const CHANNEL_CONFIG_TYPEHASH: B256 =
    b256!("1c9a06ceab9b0ebbd3301dc56c9111bb6d9af421356dc9ccb3b7084c755db308");
/// `keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)")`.
const VOUCHER_TYPEHASH: B256 =
    b256!("1e1bd6ff84c3e0d9029a292b212e039c0ca97ec497c55191a4a5874294609a69");
/// `keccak256("ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)")`.
const RECEIVE_WITH_AUTHORIZATION_TYPEHASH: B256 =
    b256!("d099cc98ef71107a616c4f0f941f04c322d8e254fe26b3c6668db87aae413de8");

sol! {
    /// The escrow's channel configuration; its EIP-712 hash is the channel id.
    #[derive(Debug, PartialEq, Eq)]
    struct ChannelConfigSol {
        address payer;
        address payerAuthorizer;
        address receiver;
        address receiverAuthorizer;
        address token;
        uint40 withdrawDelay;
        bytes32 salt;
    }

    #[derive(Debug, PartialEq, Eq)]
    struct VoucherSol {
        ChannelConfigSol channel;
        uint128 maxClaimableAmount;
    }

    #[derive(Debug, PartialEq, Eq)]
    struct VoucherClaim {
        VoucherSol voucher;
        bytes signature;
        uint128 totalClaimed;
    }

    /// The calls levy makes on the escrow.
    interface IBatchSettlement {
        function deposit(ChannelConfigSol config, uint128 amount, address collector, bytes collectorData) external;
        function claimWithSignature(VoucherClaim[] voucherClaims, bytes authorizerSignature) external;
        function settle(address receiver, address token) external;
        function refundWithSignature(ChannelConfigSol config, uint128 amount, uint256 nonce, bytes receiverAuthorizerSignature) external;
        function multicall(bytes[] data) external returns (bytes[] results);
        function channels(bytes32 channelId) external view returns (uint128 balance, uint128 totalClaimed);
        function pendingWithdrawals(bytes32 channelId) external view returns (uint128 amount, uint40 initiatedAt);
        function refundNonce(bytes32 channelId) external view returns (uint256);
    }
}

/// A channel's configuration as the client sends it (and as levy journals it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelConfig {
    pub payer: Address,
    pub payer_authorizer: Address,
    pub receiver: Address,
    pub receiver_authorizer: Address,
    pub token: Address,
    pub withdraw_delay: u64,
    pub salt: B256,
}

impl ChannelConfig {
    /// The escrow's ABI form.
    pub fn to_sol(&self) -> ChannelConfigSol {
        ChannelConfigSol {
            payer: self.payer,
            payerAuthorizer: self.payer_authorizer,
            receiver: self.receiver,
            receiverAuthorizer: self.receiver_authorizer,
            token: self.token,
            withdrawDelay: alloy_primitives::Uint::<40, 1>::from(self.withdraw_delay),
            salt: self.salt,
        }
    }

    /// The channel id: the EIP-712 digest of the config under the escrow's domain
    /// separator `domain` (see [`domain_separator`]).
    pub fn id(&self, domain: &B256) -> B256 {
        let mut data = [0u8; 32 * 8];
        data[..32].copy_from_slice(CHANNEL_CONFIG_TYPEHASH.as_slice());
        for (i, a) in [
            self.payer,
            self.payer_authorizer,
            self.receiver,
            self.receiver_authorizer,
            self.token,
        ]
        .iter()
        .enumerate()
        {
            data[32 * (i + 1) + 12..32 * (i + 2)].copy_from_slice(a.as_slice());
        }
        data[32 * 6 + 24..32 * 7].copy_from_slice(&self.withdraw_delay.to_be_bytes());
        data[32 * 7..].copy_from_slice(self.salt.as_slice());
        typed_digest(domain, &keccak256(data))
    }

    /// Who signs its vouchers.
    pub fn voucher_signer(&self) -> Address {
        if self.payer_authorizer.is_zero() {
            self.payer
        } else {
            self.payer_authorizer
        }
    }
}

/// The escrow's EIP-712 domain separator on chain `chain_id`.
pub fn domain_separator(chain_id: u64) -> B256 {
    let typehash = keccak256(
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)",
    );
    keccak256(
        (
            typehash,
            keccak256("x402 Batch Settlement"),
            keccak256("1"),
            U256::from(chain_id),
            BATCH_SETTLEMENT_ADDRESS,
        )
            .abi_encode(),
    )
}

/// The digest a voucher for `max_claimable` on `channel_id` signs, under the escrow's
/// domain separator `domain`.
pub fn voucher_digest(domain: &B256, channel_id: B256, max_claimable: u128) -> B256 {
    let message = keccak256((VOUCHER_TYPEHASH, channel_id, U256::from(max_claimable)).abi_encode());
    typed_digest(domain, &message)
}

/// The digest levy's authorizer signs to claim `claims` in one `claimWithSignature`.
pub fn claim_batch_digest(domain: &B256, claims: &[Claim]) -> B256 {
    let entry_type =
        keccak256("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)");
    let batch_type = keccak256(
        "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)",
    );
    let mut entries = Vec::with_capacity(claims.len() * 32);
    for c in claims {
        let entry = (
            entry_type,
            c.channel_id,
            U256::from(c.max_claimable),
            U256::from(c.total_claimed),
        );
        entries.extend_from_slice(keccak256(entry.abi_encode()).as_slice());
    }
    let message = keccak256((batch_type, keccak256(&entries)).abi_encode());
    typed_digest(domain, &message)
}

/// The digest levy's authorizer signs for a cooperative refund.
pub fn refund_digest(domain: &B256, channel_id: B256, nonce: u64, amount: u128) -> B256 {
    let typehash = keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)");
    let message =
        keccak256((typehash, channel_id, U256::from(nonce), U256::from(amount)).abi_encode());
    typed_digest(domain, &message)
}

/// The ERC-3009 nonce of a deposit into `channel_id`: `keccak256(abi.encode(channelId,
/// uint256(salt)))`, so one signature can fund only that channel.
pub fn deposit_nonce(channel_id: B256, salt: B256) -> B256 {
    keccak256((channel_id, salt).abi_encode())
}

/// One channel's claim: its latest voucher and the cumulative amount levy takes under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub channel_id: B256,
    pub config: ChannelConfig,
    pub max_claimable: u128,
    pub signature: Bytes,
    pub total_claimed: u128,
}

impl Claim {
    /// The escrow's ABI form.
    pub fn to_sol(&self) -> VoucherClaim {
        VoucherClaim {
            voucher: VoucherSol {
                channel: self.config.to_sol(),
                maxClaimableAmount: self.max_claimable,
            },
            signature: self.signature.clone(),
            totalClaimed: self.total_claimed,
        }
    }
}

/// A `batch-settlement` payment as the client sends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelPayment {
    pub x402_version: u64,
    pub accepted: AcceptedRequirements,
    pub payload: ChannelPayload,
}

/// The three payloads, by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ChannelPayload {
    /// Funds (or tops up) the channel, with the voucher for this request.
    Deposit(DepositPayload),
    /// Pays this request from the channel's balance.
    Voucher(VoucherPayload),
    /// Asks for the unclaimed balance back; its voucher charges nothing new.
    Refund(RefundPayload),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoucherPayload {
    pub channel_config: WireConfig,
    pub voucher: WireVoucher,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DepositPayload {
    pub channel_config: WireConfig,
    pub voucher: WireVoucher,
    pub deposit: WireDeposit,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundPayload {
    pub channel_config: WireConfig,
    pub voucher: WireVoucher,
    #[serde(default)]
    pub amount: Option<Number>,
}

/// `channelConfig` as sent (the delay may be a JSON number or a string).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireConfig {
    pub payer: String,
    pub payer_authorizer: String,
    pub receiver: String,
    pub receiver_authorizer: String,
    pub token: String,
    pub withdraw_delay: Number,
    pub salt: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireVoucher {
    pub channel_id: String,
    pub max_claimable_amount: Number,
    pub signature: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WireDeposit {
    pub amount: Number,
    pub authorization: WireDepositAuthorization,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireDepositAuthorization {
    #[serde(default)]
    pub erc3009_authorization: Option<WireErc3009>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireErc3009 {
    pub valid_after: Number,
    pub valid_before: Number,
    pub salt: String,
    pub signature: String,
}

/// What a route offers to channels on one (network, asset) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// The escrow's EIP-712 domain separator on the requirement's chain.
    pub escrow_domain: B256,
    pub token: Address,
    /// The token's EIP-712 domain separator (for the deposit's ERC-3009 signature).
    pub token_domain: B256,
    pub receiver: Address,
    pub receiver_authorizer: Address,
    pub withdraw_delay: u64,
    pub price: u128,
    pub min_deposit: u128,
}

impl Offer {
    /// The channel terms of a `batch-settlement` requirement; `None` for other schemes.
    pub fn of(r: &crate::pricing::Requirement) -> Option<Offer> {
        let crate::pricing::Scheme::Batch {
            receiver_authorizer,
            withdraw_delay,
            min_deposit,
            escrow_domain,
        } = r.scheme
        else {
            return None;
        };
        Some(Offer {
            escrow_domain,
            token: r.asset,
            token_domain: r.domain_separator,
            receiver: r.pay_to,
            receiver_authorizer,
            withdraw_delay,
            price: u128::try_from(r.amount).ok()?,
            min_deposit: u128::try_from(min_deposit).ok()?,
        })
    }
}

/// A voucher with its signature recovered to the channel's voucher signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedVoucher {
    pub channel_id: B256,
    pub config: ChannelConfig,
    pub max_claimable: u128,
    pub signature: Bytes,
}

/// A deposit whose ERC-3009 signature recovered to the payer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposit {
    pub amount: u128,
    pub valid_after: u64,
    pub valid_before: u64,
    pub salt: B256,
    pub signature: Bytes,
}

impl Deposit {
    /// `collectorData` for the ERC-3009 collector.
    pub fn collector_data(&self) -> Bytes {
        (
            U256::from(self.valid_after),
            U256::from(self.valid_before),
            U256::from_be_bytes(self.salt.0),
            self.signature.clone(),
        )
            .abi_encode_params()
            .into()
    }
}

/// A payload whose fields and signatures passed every inline check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    Voucher(SignedVoucher),
    Deposit(SignedVoucher, Deposit),
    /// A cooperative refund of `amount` (all that is unclaimed when `None`).
    Refund(SignedVoucher, Option<u128>),
}

impl Checked {
    pub fn voucher(&self) -> &SignedVoucher {
        match self {
            Checked::Voucher(v) | Checked::Deposit(v, _) | Checked::Refund(v, _) => v,
        }
    }
}

/// Why a channel payment was refused; [`ChannelError::reason`] is the x402 code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("`{0}` is malformed")]
    Malformed(&'static str),
    #[error("channelConfig.receiver is not the payTo address")]
    ReceiverMismatch,
    #[error("channelConfig.receiverAuthorizer is not levy's")]
    ReceiverAuthorizerMismatch,
    #[error("channelConfig.token is not the asset offered")]
    TokenMismatch,
    #[error("channelConfig.withdrawDelay is not the one offered")]
    WithdrawDelayMismatch,
    #[error("voucher.channelId is not the id of channelConfig")]
    ChannelIdMismatch,
    #[error("the voucher signature does not recover to the payer authorizer")]
    VoucherSignature,
    #[error("the deposit authorization is not an ERC-3009 one")]
    Erc3009Required,
    #[error("the deposit authorization is not valid yet")]
    DepositNotYetValid,
    #[error("the deposit authorization expires too soon")]
    DepositExpired,
    #[error("the deposit signature does not recover to the payer")]
    DepositSignature,
    #[error("the deposit transaction failed")]
    DepositFailed,
    #[error("the deposit is below the minimum of {0}")]
    DepositBelowMinimum(u128),
    #[error("the voucher is for {signed}, but the channel's next cumulative amount is {expected}")]
    CumulativeMismatch { signed: u128, expected: u128 },
    #[error("the voucher is below what was already claimed")]
    BelowClaimed,
    #[error("the voucher claims more than the channel holds")]
    ExceedsBalance,
    #[error("the channel has no deposit")]
    NotFound,
    #[error("another request on this channel is in flight")]
    Busy,
    #[error("the refund amount is not a positive integer")]
    RefundAmount,
    #[error("nothing is left to refund in this channel")]
    RefundNoBalance,
    #[error("the refund transaction failed")]
    RefundFailed,
    #[error("the payer asked to withdraw this channel: it takes no more calls")]
    WithdrawPending,
    #[error("a refund was made under this voucher already: pay a call first")]
    RefundVoucherUsed,
}

impl ChannelError {
    /// The x402 reason code the official client knows.
    pub fn reason(&self) -> &'static str {
        match self {
            ChannelError::Malformed(_) => "invalid_payload",
            ChannelError::ReceiverMismatch => "invalid_batch_settlement_evm_receiver_mismatch",
            ChannelError::ReceiverAuthorizerMismatch => {
                "invalid_batch_settlement_evm_receiver_authorizer_mismatch"
            }
            ChannelError::TokenMismatch => "invalid_batch_settlement_evm_token_mismatch",
            ChannelError::WithdrawDelayMismatch => {
                "invalid_batch_settlement_evm_withdraw_delay_mismatch"
            }
            ChannelError::ChannelIdMismatch => "invalid_batch_settlement_evm_channel_id_mismatch",
            ChannelError::VoucherSignature => "invalid_batch_settlement_evm_voucher_signature",
            ChannelError::Erc3009Required => {
                "invalid_batch_settlement_evm_erc3009_authorization_required"
            }
            ChannelError::DepositNotYetValid => {
                "invalid_batch_settlement_evm_payload_authorization_valid_after"
            }
            ChannelError::DepositExpired => {
                "invalid_batch_settlement_evm_payload_authorization_valid_before"
            }
            ChannelError::DepositSignature => {
                "invalid_batch_settlement_evm_receive_authorization_signature"
            }
            ChannelError::DepositFailed => {
                "invalid_batch_settlement_evm_deposit_transaction_failed"
            }
            ChannelError::DepositBelowMinimum(_) => {
                "invalid_batch_settlement_evm_deposit_below_min_deposit"
            }
            ChannelError::CumulativeMismatch { .. } => {
                "invalid_batch_settlement_evm_cumulative_amount_mismatch"
            }
            ChannelError::BelowClaimed => "invalid_batch_settlement_evm_cumulative_below_claimed",
            ChannelError::ExceedsBalance => {
                "invalid_batch_settlement_evm_cumulative_exceeds_balance"
            }
            ChannelError::NotFound => "invalid_batch_settlement_evm_channel_not_found",
            ChannelError::Busy => "invalid_batch_settlement_evm_channel_busy",
            ChannelError::RefundAmount => "invalid_batch_settlement_evm_refund_amount_invalid",
            ChannelError::RefundNoBalance => "invalid_batch_settlement_evm_refund_no_balance",
            ChannelError::RefundFailed => "invalid_batch_settlement_evm_refund_transaction_failed",
            ChannelError::WithdrawPending => "invalid_batch_settlement_evm_withdraw_pending",
            ChannelError::RefundVoucherUsed => "invalid_batch_settlement_evm_refund_voucher_used",
        }
    }
}

/// Decodes a batch-settlement payment from the payment header's JSON.
pub fn decode(json: &[u8]) -> Result<ChannelPayment, ChannelError> {
    serde_json::from_slice(json).map_err(|_| ChannelError::Malformed("payload"))
}

/// Whether a decoded payment header's JSON names the batch-settlement scheme (cheap: looks
/// for the scheme's name before any full decode).
pub fn names_scheme(json: &[u8]) -> bool {
    json.windows(SCHEME_BATCH.len() + 2).any(|w| {
        w[0] == b'"' && w[w.len() - 1] == b'"' && &w[1..w.len() - 1] == SCHEME_BATCH.as_bytes()
    })
}

/// Checks a payload against the offer at `now`: the channel is the one levy offers, the id
/// is its id, the voucher is signed by the channel's voucher signer; a deposit's ERC-3009
/// authorization is for the collector, bound to the channel, current, signed by the payer.
/// What the ledger decides (the cumulative amount, the balance) is left to [`Ledger`].
pub fn check(payload: &ChannelPayload, offer: &Offer, now: u64) -> Result<Checked, ChannelError> {
    match payload {
        ChannelPayload::Voucher(p) => Ok(Checked::Voucher(signed_voucher(
            &p.channel_config,
            &p.voucher,
            offer,
        )?)),
        ChannelPayload::Refund(p) => {
            let voucher = signed_voucher(&p.channel_config, &p.voucher, offer)?;
            let amount = match &p.amount {
                None => None,
                Some(n) => match parse_u128(&n.0) {
                    Some(a) if a > 0 => Some(a),
                    _ => return Err(ChannelError::RefundAmount),
                },
            };
            Ok(Checked::Refund(voucher, amount))
        }
        ChannelPayload::Deposit(p) => {
            let voucher = signed_voucher(&p.channel_config, &p.voucher, offer)?;
            let amount =
                parse_u128(&p.deposit.amount.0).ok_or(ChannelError::Malformed("deposit.amount"))?;
            if amount == 0 {
                return Err(ChannelError::Malformed("deposit.amount"));
            }
            if amount < offer.min_deposit {
                // Refused before any transaction: levy pays a deposit's gas.
                return Err(ChannelError::DepositBelowMinimum(offer.min_deposit));
            }
            let auth = p
                .deposit
                .authorization
                .erc3009_authorization
                .as_ref()
                .ok_or(ChannelError::Erc3009Required)?;
            let valid_after = parse_time(&auth.valid_after.0)
                .ok_or(ChannelError::Malformed("erc3009Authorization.validAfter"))?;
            let valid_before = parse_time(&auth.valid_before.0)
                .ok_or(ChannelError::Malformed("erc3009Authorization.validBefore"))?;
            let salt = parse_b256(&auth.salt)
                .ok_or(ChannelError::Malformed("erc3009Authorization.salt"))?;
            if valid_after > now {
                return Err(ChannelError::DepositNotYetValid);
            }
            // The deposit is sent at once; a few seconds cover the block it lands in.
            if valid_before <= now + 6 {
                return Err(ChannelError::DepositExpired);
            }
            let signature = parse_signature(&auth.signature)
                .ok_or(ChannelError::Malformed("erc3009Authorization.signature"))?;
            let digest = receive_digest(
                &offer.token_domain,
                voucher.config.payer,
                amount,
                valid_after,
                valid_before,
                deposit_nonce(voucher.channel_id, salt),
            );
            if recover(&signature, digest) != Some(voucher.config.payer) {
                return Err(ChannelError::DepositSignature);
            }
            Ok(Checked::Deposit(
                voucher,
                Deposit {
                    amount,
                    valid_after,
                    valid_before,
                    salt,
                    signature: Bytes::copy_from_slice(&signature.as_bytes()),
                },
            ))
        }
    }
}

fn signed_voucher(
    wire: &WireConfig,
    voucher: &WireVoucher,
    offer: &Offer,
) -> Result<SignedVoucher, ChannelError> {
    let config = parse_config(wire)?;
    if config.receiver != offer.receiver {
        return Err(ChannelError::ReceiverMismatch);
    }
    if config.receiver_authorizer != offer.receiver_authorizer {
        return Err(ChannelError::ReceiverAuthorizerMismatch);
    }
    if config.token != offer.token {
        return Err(ChannelError::TokenMismatch);
    }
    if config.withdraw_delay != offer.withdraw_delay {
        return Err(ChannelError::WithdrawDelayMismatch);
    }
    let channel_id = config.id(&offer.escrow_domain);
    let claimed =
        parse_b256(&voucher.channel_id).ok_or(ChannelError::Malformed("voucher.channelId"))?;
    if claimed != channel_id {
        return Err(ChannelError::ChannelIdMismatch);
    }
    let max_claimable = parse_u128(&voucher.max_claimable_amount.0)
        .ok_or(ChannelError::Malformed("voucher.maxClaimableAmount"))?;
    let signature =
        parse_signature(&voucher.signature).ok_or(ChannelError::Malformed("voucher.signature"))?;
    let digest = voucher_digest(&offer.escrow_domain, channel_id, max_claimable);
    if recover(&signature, digest) != Some(config.voucher_signer()) {
        return Err(ChannelError::VoucherSignature);
    }
    Ok(SignedVoucher {
        channel_id,
        config,
        max_claimable,
        signature: Bytes::copy_from_slice(&signature.as_bytes()),
    })
}

/// The token-domain digest (`token_domain`) of an ERC-3009 `ReceiveWithAuthorization` from
/// `from` to the deposit collector: what a deposit's `erc3009Authorization.signature` signs.
pub fn receive_digest(
    token_domain: &B256,
    from: Address,
    value: u128,
    valid_after: u64,
    valid_before: u64,
    nonce: B256,
) -> B256 {
    let message = keccak256(
        (
            RECEIVE_WITH_AUTHORIZATION_TYPEHASH,
            from,
            ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
            U256::from(value),
            U256::from(valid_after),
            U256::from(valid_before),
            nonce,
        )
            .abi_encode(),
    );
    typed_digest(token_domain, &message)
}

/// The signer of `digest`, for a low-s 65-byte ECDSA signature.
fn recover(signature: &Signature, digest: B256) -> Option<Address> {
    if signature.normalize_s().is_some() {
        return None; // high s: malleable
    }
    alloy_consensus::crypto::secp256k1::recover_signer(signature, digest).ok()
}

fn parse_config(wire: &WireConfig) -> Result<ChannelConfig, ChannelError> {
    let addr = |text: &str, field: &'static str| {
        Address::from_str(text).map_err(|_| ChannelError::Malformed(field))
    };
    Ok(ChannelConfig {
        payer: addr(&wire.payer, "channelConfig.payer")?,
        payer_authorizer: addr(&wire.payer_authorizer, "channelConfig.payerAuthorizer")?,
        receiver: addr(&wire.receiver, "channelConfig.receiver")?,
        receiver_authorizer: addr(
            &wire.receiver_authorizer,
            "channelConfig.receiverAuthorizer",
        )?,
        token: addr(&wire.token, "channelConfig.token")?,
        withdraw_delay: parse_time(&wire.withdraw_delay.0)
            .ok_or(ChannelError::Malformed("channelConfig.withdrawDelay"))?,
        salt: parse_b256(&wire.salt).ok_or(ChannelError::Malformed("channelConfig.salt"))?,
    })
}

fn parse_signature(text: &str) -> Option<Signature> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    if hex.len() != 130 {
        return None;
    }
    let mut raw = [0u8; 65];
    alloy_primitives::hex::decode_to_slice(hex, &mut raw).ok()?;
    Signature::from_raw_array(&raw).ok()
}

fn parse_u128(text: &str) -> Option<u128> {
    (!text.is_empty() && text.len() <= 39 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// What the escrow says about a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escrowed {
    pub balance: u128,
    pub total_claimed: u128,
    /// Unix seconds; 0 when no withdrawal is pending.
    pub withdraw_requested_at: u64,
    pub refund_nonce: u64,
    /// When it was read (unix seconds).
    pub read_at: u64,
}

/// A cooperative refund levy agreed to (see [`Ledger::refund`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundPlan {
    /// Collects what was charged beyond what is claimed, before the refund.
    pub claim: Option<Claim>,
    /// Returned to the payer.
    pub amount: u128,
    /// The escrow's refund nonce the authorizer signs.
    pub nonce: u64,
}

/// levy's ledger of one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    pub channel_id: B256,
    pub config: ChannelConfig,
    /// The operator's name of the network the channel lives on.
    pub network: String,
    pub chain_id: u64,
    /// Deposited, less refunds and withdrawals (as last read, or after levy's own deposit).
    pub balance: u128,
    /// Claimed on chain.
    pub total_claimed: u128,
    /// What levy earned on this channel: the cumulative price of the calls served (for a
    /// metered route, what they delivered). What claims collect.
    pub charged: u128,
    /// Reserved on the protocol's ledger but not earned: the unused part of metered calls'
    /// ceilings. It goes back to the payer on refund or withdrawal.
    #[serde(default)]
    pub unearned: u128,
    /// The ceilings of metered calls whose responses are still streaming (part of
    /// `unearned`, not refundable until they end). Not kept across restarts: a stream cut by
    /// one earns nothing.
    #[serde(skip)]
    pub streaming: u128,
    /// The latest voucher levy holds, and its signature (empty: none yet).
    pub signed_max: u128,
    pub signature: Bytes,
    /// When the payer asked to withdraw (unix seconds; 0: not asked).
    pub withdraw_requested_at: u64,
    pub refund_nonce: u64,
    /// When levy last served a call on it, or first saw it (unix seconds).
    #[serde(default)]
    pub last_used: u64,
    /// When the escrow was last read for it (unix seconds; 0: never): admission reads it
    /// again once this is older than [`Ledger::sync_ttl`].
    #[serde(default)]
    pub synced_at: u64,
    /// The cumulative amount of the voucher the last cooperative refund was made under:
    /// a refund needs a newer voucher (one more call paid), so a refund payload replayed
    /// sends no transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refunded_under: Option<u128>,
}

impl Ledger {
    /// A channel levy learns about from the chain: nothing charged beyond what is claimed.
    pub fn new(
        channel_id: B256,
        config: ChannelConfig,
        network: String,
        chain_id: u64,
        escrowed: &Escrowed,
    ) -> Self {
        Self {
            channel_id,
            config,
            network,
            chain_id,
            balance: escrowed.balance,
            total_claimed: escrowed.total_claimed,
            charged: escrowed.total_claimed,
            unearned: 0,
            streaming: 0,
            signed_max: 0,
            signature: Bytes::new(),
            withdraw_requested_at: escrowed.withdraw_requested_at,
            refund_nonce: escrowed.refund_nonce,
            last_used: 0,
            synced_at: escrowed.read_at,
            refunded_under: None,
        }
    }

    /// Takes in what the escrow says now; what levy knows was claimed only grows.
    pub fn observe(&mut self, escrowed: &Escrowed) {
        self.balance = escrowed.balance;
        self.total_claimed = self.total_claimed.max(escrowed.total_claimed);
        self.withdraw_requested_at = escrowed.withdraw_requested_at;
        self.refund_nonce = escrowed.refund_nonce;
        self.synced_at = self.synced_at.max(escrowed.read_at);
    }

    /// What the escrow said last, as levy holds it.
    pub fn escrowed(&self) -> Escrowed {
        Escrowed {
            balance: self.balance,
            total_claimed: self.total_claimed,
            withdraw_requested_at: self.withdraw_requested_at,
            refund_nonce: self.refund_nonce,
            read_at: self.synced_at,
        }
    }

    /// How long an escrow read is trusted at admission: a third of the channel's withdraw
    /// delay, between 30 s and 5 min (as the reference servers do). A withdrawal needs the
    /// whole delay, so one started is seen long before it can complete.
    pub fn sync_ttl(&self) -> u64 {
        (self.config.withdraw_delay / 3).clamp(30, 300)
    }

    /// Whether admission must read the escrow again at unix second `now`: the last read is
    /// older than [`Ledger::sync_ttl`], or the payer asked to withdraw (until the escrow
    /// says the withdrawal is done).
    pub fn needs_sync(&self, now: u64) -> bool {
        self.withdraw_requested_at != 0 || now >= self.synced_at.saturating_add(self.sync_ttl())
    }

    /// Whether the channel takes new calls at all: not while its payer is withdrawing.
    pub fn open_for_calls(&self) -> Result<(), ChannelError> {
        if self.withdraw_requested_at != 0 {
            return Err(ChannelError::WithdrawPending);
        }
        Ok(())
    }

    /// Whether `voucher` pays exactly `price` on top of what was charged, within the balance.
    pub fn admits(&self, voucher: &SignedVoucher, price: u128) -> Result<(), ChannelError> {
        if self.balance == 0 {
            return Err(ChannelError::NotFound);
        }
        self.open_for_calls()?;
        self.in_step(voucher, price)?;
        if voucher.max_claimable > self.balance {
            return Err(ChannelError::ExceedsBalance);
        }
        Ok(())
    }

    /// Whether `voucher` is the channel's next cumulative amount for a request at `price`
    /// (what [`Ledger::admits`] checks besides the balance): levy asks this before it
    /// submits a deposit, so a client out of step is corrected before its money moves.
    pub fn in_step(&self, voucher: &SignedVoucher, price: u128) -> Result<(), ChannelError> {
        let expected = self.cumulative().saturating_add(price);
        if voucher.max_claimable < self.total_claimed {
            return Err(ChannelError::BelowClaimed);
        }
        if voucher.max_claimable != expected {
            return Err(ChannelError::CumulativeMismatch {
                signed: voucher.max_claimable,
                expected,
            });
        }
        Ok(())
    }

    /// The protocol's cumulative charge (`chargedCumulativeAmount`): what was earned plus
    /// what metered calls reserved and did not use. The next voucher is for this plus a price.
    pub fn cumulative(&self) -> u128 {
        self.charged.saturating_add(self.unearned)
    }

    /// Takes `price` for a served request under `voucher` (already admitted).
    pub fn charge(&mut self, voucher: &SignedVoucher, price: u128) {
        self.charged = self.charged.saturating_add(price);
        self.signed_max = voucher.max_claimable;
        self.signature = voucher.signature.clone();
    }

    /// Takes a metered call's `ceiling` onto the protocol's ledger under `voucher` (already
    /// admitted) without earning any of it yet: [`Ledger::earn`] moves what the response
    /// delivered into what levy claims.
    pub fn reserve(&mut self, voucher: &SignedVoucher, ceiling: u128) {
        self.unearned = self.unearned.saturating_add(ceiling);
        self.streaming = self.streaming.saturating_add(ceiling);
        self.signed_max = voucher.max_claimable;
        self.signature = voucher.signature.clone();
    }

    /// Earns `amount` of a metered call reserved at `ceiling` whose response ended (never
    /// more than what is reserved).
    pub fn earn(&mut self, amount: u128, ceiling: u128) {
        self.streaming = self.streaming.saturating_sub(ceiling);
        let amount = amount.min(ceiling).min(self.unearned);
        self.unearned -= amount;
        self.charged = self.charged.saturating_add(amount);
    }

    /// What is neither earned nor held for a response still streaming: what a refund may
    /// return.
    fn refundable(&self) -> u128 {
        self.balance
            .saturating_sub(self.charged)
            .saturating_sub(self.streaming)
    }

    /// What levy can claim now: everything charged beyond what is claimed, under the latest
    /// voucher.
    pub fn claim(&self) -> Option<Claim> {
        let total = self.charged.min(self.signed_max);
        (total > self.total_claimed && !self.signature.is_empty()).then(|| Claim {
            channel_id: self.channel_id,
            config: self.config,
            max_claimable: self.signed_max,
            signature: self.signature.clone(),
            total_claimed: total,
        })
    }

    /// What a cooperative refund under `voucher` returns to the payer: `requested`, or
    /// everything not charged when `None`, capped at what is not charged. The voucher is
    /// zero-charge (for exactly the cumulative amount); what was charged and not yet claimed is
    /// claimed in the same transaction, first, so a refund never returns what levy earned.
    pub fn refund(
        &self,
        voucher: &SignedVoucher,
        requested: Option<u128>,
    ) -> Result<RefundPlan, ChannelError> {
        self.in_step(voucher, 0)?;
        let mut plan = self.returning(requested)?;
        if self.refunded_under == Some(voucher.max_claimable) {
            return Err(ChannelError::RefundVoucherUsed);
        }
        plan.claim = (self.charged > self.total_claimed).then(|| Claim {
            channel_id: self.channel_id,
            config: self.config,
            max_claimable: voucher.max_claimable,
            signature: voucher.signature.clone(),
            total_claimed: self.charged,
        });
        Ok(plan)
    }

    /// levy's own refund of a channel left idle: everything not charged, with what was
    /// charged claimed first under the latest voucher.
    pub fn idle_refund(&self) -> Result<RefundPlan, ChannelError> {
        let mut plan = self.returning(None)?;
        plan.claim = self.claim();
        Ok(plan)
    }

    /// Whether levy should refund this channel now, at unix second `now`: nobody paid on it
    /// for `idle` seconds and something is left beyond what was charged.
    pub fn is_idle(&self, now: u64, idle: u64) -> bool {
        now.saturating_sub(self.last_used) >= idle && self.refundable() > 0
    }

    /// A refund of `requested` (everything not charged when `None`), capped at that, with
    /// no claim yet.
    fn returning(&self, requested: Option<u128>) -> Result<RefundPlan, ChannelError> {
        let remainder = self.refundable();
        if remainder == 0 {
            return Err(ChannelError::RefundNoBalance);
        }
        Ok(RefundPlan {
            claim: None,
            amount: requested.map_or(remainder, |r| r.min(remainder)),
            nonce: self.refund_nonce,
        })
    }

    /// Folds in a record of the same channel written around the same time: the latest
    /// voucher is the one for more, claims only grow, the balance is the later record's.
    pub fn merge(&mut self, later: &Ledger) {
        if later.signed_max > self.signed_max {
            self.signed_max = later.signed_max;
            self.signature = later.signature.clone();
        }
        let cumulative = self.cumulative().max(later.cumulative());
        self.charged = self.charged.max(later.charged);
        self.unearned = cumulative.saturating_sub(self.charged);
        self.total_claimed = self.total_claimed.max(later.total_claimed);
        self.balance = later.balance;
        self.withdraw_requested_at = later.withdraw_requested_at;
        self.refund_nonce = self.refund_nonce.max(later.refund_nonce);
        self.last_used = self.last_used.max(later.last_used);
        self.synced_at = self.synced_at.max(later.synced_at);
        self.refunded_under = self.refunded_under.max(later.refunded_under);
    }

    /// Folds in what another replica's log said of this channel, after Redis lost it: what
    /// was charged, claimed and signed only grows; the balance only falls (a deposit one
    /// log missed is read from the escrow again: the merged ledger counts as never read).
    pub fn absorb(&mut self, logged: &Ledger) {
        let balance = self.balance.min(logged.balance);
        self.merge(logged);
        self.balance = balance;
        self.synced_at = 0;
    }

    /// `channelState` as the official client reads it.
    pub fn state_json(&self) -> serde_json::Value {
        serde_json::json!({
            "channelId": self.channel_id.to_string(),
            "balance": self.balance.to_string(),
            "totalClaimed": self.total_claimed.to_string(),
            "withdrawRequestedAt": self.withdraw_requested_at,
            "refundNonce": self.refund_nonce.to_string(),
            "chargedCumulativeAmount": self.cumulative().to_string(),
        })
    }

    /// `voucherState`: the latest voucher, so a client that lost its ledger can adopt it.
    pub fn voucher_json(&self) -> Option<serde_json::Value> {
        (!self.signature.is_empty()).then(|| {
            serde_json::json!({
                "signedMaxClaimable": self.signed_max.to_string(),
                "signature": self.signature.to_string(),
            })
        })
    }
}

#[cfg(test)]
mod tests;
