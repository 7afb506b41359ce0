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

use alloy_primitives::{b256, keccak256, Address, Bytes, B256, U256};
use alloy_sol_types::{sol, SolValue};
use serde::{Deserialize, Serialize};

use crate::verify::typed_digest;

mod ledger;
mod wire;

pub use ledger::{Escrowed, Ledger, RefundPlan};
pub use wire::*;

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

#[cfg(test)]
mod tests;
