//! The paying side of x402 `batch-settlement` on EVM: one channel's config from a
//! requirement, its deposit (an ERC-3009 `ReceiveWithAuthorization` to the deposit collector,
//! with the first voucher) and its cumulative vouchers, as `PAYMENT-SIGNATURE` headers. Used by
//! the load tool and benches. Pure.

use std::str::FromStr;

use alloy_primitives::{Address, Bytes, B256};
use serde_json::{json, Value};

use super::{ClientError, Payer, Terms};
use crate::channel::{
    deposit_nonce, domain_separator, receive_digest, voucher_digest, ChannelConfig,
};
use crate::x402::encode_header;

/// One channel a payer opens on a `batch-settlement` requirement.
#[derive(Debug, Clone)]
pub struct Channel {
    payer: Payer,
    accepted: Value,
    config: ChannelConfig,
    id: B256,
    escrow_domain: B256,
    token_domain: B256,
}

impl Channel {
    /// The channel `payer` signs for itself on the v2 requirement `accepted`, told apart from
    /// the payer's other channels by `salt`.
    pub fn open(payer: &Payer, accepted: &Value, salt: B256) -> Result<Self, ClientError> {
        let terms = Terms::from_v2(accepted)?;
        let receiver_authorizer = accepted
            .pointer("/extra/receiverAuthorizer")
            .and_then(Value::as_str)
            .and_then(|a| Address::from_str(a).ok())
            .ok_or(ClientError::BadRequirement("receiverAuthorizer"))?;
        let withdraw_delay = accepted
            .pointer("/extra/withdrawDelay")
            .and_then(Value::as_u64)
            .ok_or(ClientError::BadRequirement("withdrawDelay"))?;
        let config = ChannelConfig {
            payer: payer.address(),
            payer_authorizer: payer.address(),
            receiver: terms.pay_to,
            receiver_authorizer,
            token: terms.asset,
            withdraw_delay,
            salt,
        };
        let escrow_domain = domain_separator(terms.chain_id);
        Ok(Self {
            payer: payer.clone(),
            accepted: accepted.clone(),
            id: config.id(&escrow_domain),
            config,
            escrow_domain,
            token_domain: terms.domain_separator(),
        })
    }

    /// The channel id.
    pub fn id(&self) -> B256 {
        self.id
    }

    /// A voucher letting the receiver claim up to `cumulative` in all.
    pub fn voucher(&self, cumulative: u128) -> Result<String, ClientError> {
        Ok(self.header(json!({
            "type": "voucher",
            "channelConfig": self.config,
            "voucher": self.voucher_json(cumulative)?,
        })))
    }

    /// A deposit of `amount`, valid from `valid_after` until `valid_before` (unix seconds),
    /// carrying the voucher for `cumulative`.
    pub fn deposit(
        &self,
        amount: u128,
        cumulative: u128,
        valid_after: u64,
        valid_before: u64,
    ) -> Result<String, ClientError> {
        let salt = B256::random();
        let digest = receive_digest(
            &self.token_domain,
            self.config.payer,
            amount,
            valid_after,
            valid_before,
            deposit_nonce(self.id, salt),
        );
        let signature = self.payer.sign_digest(digest)?;
        Ok(self.header(json!({
            "type": "deposit",
            "channelConfig": self.config,
            "voucher": self.voucher_json(cumulative)?,
            "deposit": {
                "amount": amount.to_string(),
                "authorization": {"erc3009Authorization": {
                    "validAfter": valid_after.to_string(),
                    "validBefore": valid_before.to_string(),
                    "salt": salt,
                    "signature": Bytes::from(signature.to_vec()),
                }},
            },
        })))
    }

    fn voucher_json(&self, cumulative: u128) -> Result<Value, ClientError> {
        let digest = voucher_digest(&self.escrow_domain, self.id, cumulative);
        let signature = self.payer.sign_digest(digest)?;
        Ok(json!({
            "channelId": self.id,
            "maxClaimableAmount": cumulative.to_string(),
            "signature": Bytes::from(signature.to_vec()),
        }))
    }

    fn header(&self, payload: Value) -> String {
        let payment = json!({"x402Version": 2, "accepted": self.accepted, "payload": payload});
        encode_header(payment.to_string().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{check, decode, Checked, Offer};
    use alloy_primitives::address;

    const USDC: Address = address!("036CbD53842c5426634e7929541eC2318f3dCF7e");
    const RECEIVER: Address = address!("15d34AAf54267DB7D7c367839AAf71A00a2C6A65");
    const AUTHORIZER: Address = address!("70997970C51812dc3A010C7d01b50e0d17dc79C8");

    fn accepted() -> Value {
        json!({
            "scheme": "batch-settlement", "network": "eip155:84532", "amount": "1000",
            "asset": USDC, "payTo": RECEIVER, "maxTimeoutSeconds": 300,
            "extra": {"name": "USDC", "version": "2", "receiverAuthorizer": AUTHORIZER,
                      "withdrawDelay": 900, "minDeposit": "10000"},
        })
    }

    fn offer() -> Offer {
        Offer {
            escrow_domain: domain_separator(84532),
            token: USDC,
            token_domain: crate::pricing::domain_separator("USDC", "2", 84532, USDC),
            receiver: RECEIVER,
            receiver_authorizer: AUTHORIZER,
            withdraw_delay: 900,
            price: 1000,
            min_deposit: 10_000,
        }
    }

    fn checked(header: &str) -> Checked {
        let json = crate::x402::decode_header(header.as_bytes()).unwrap();
        check(&decode(&json).unwrap().payload, &offer(), 1_000_000).unwrap()
    }

    #[test]
    fn a_deposit_and_the_vouchers_after_it_pass_levys_own_channel_check() {
        let payer =
            Payer::from_hex("0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6")
                .unwrap();
        let channel = Channel::open(&payer, &accepted(), B256::repeat_byte(1)).unwrap();
        let Checked::Deposit(voucher, deposit) =
            checked(&channel.deposit(50_000, 1000, 0, 2_000_000).unwrap())
        else {
            panic!("not a deposit")
        };
        assert_eq!(voucher.channel_id, channel.id());
        assert_eq!((voucher.max_claimable, deposit.amount), (1000, 50_000));
        let Checked::Voucher(next) = checked(&channel.voucher(2000).unwrap()) else {
            panic!("not a voucher")
        };
        assert_eq!((next.channel_id, next.max_claimable), (channel.id(), 2000));
    }

    #[test]
    fn channels_on_different_salts_have_different_ids() {
        let payer = Payer::from_hex(&format!("0x{}", "11".repeat(32))).unwrap();
        let a = Channel::open(&payer, &accepted(), B256::repeat_byte(1)).unwrap();
        let b = Channel::open(&payer, &accepted(), B256::repeat_byte(2)).unwrap();
        assert_ne!(a.id(), b.id());
    }
}
