//! A channel payment as the client sends it (`deposit`, `voucher` and `refund` payloads),
//! what levy offers on a route, and the inline checks of a payload against that offer.

use std::str::FromStr;

use alloy_primitives::{keccak256, Address, Bytes, Signature, B256, U256};
use alloy_sol_types::SolValue;
use serde::Deserialize;

use super::{
    deposit_nonce, voucher_digest, ChannelConfig, ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    RECEIVE_WITH_AUTHORIZATION_TYPEHASH,
};
use crate::verify::{parse_nonce as parse_b256, parse_time, typed_digest};
use crate::x402::{AcceptedRequirements, Number, SCHEME_BATCH};

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
/// What the ledger decides (the cumulative amount, the balance) is left to
/// [`Ledger`](super::Ledger).
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
