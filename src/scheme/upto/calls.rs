//! `upto` payments on chain: the calls that read a payer's Permit2 state, and the
//! `LevyBatcher.settle` transaction that charges each payment's metered amount through x402's
//! upto proxy, many per transaction, each succeeding or failing alone. The batcher's
//! `UptoSettled(owner, nonce, amount)` events tell which did.

use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::sol;
use alloy::sol_types::{SolCall, SolEvent, SolValue};

use crate::record::{PaymentRecord, UptoTerms};
use crate::x402::PERMIT2_ADDRESS;

sol! {
    interface IPermit2 {
        function nonceBitmap(address owner, uint256 wordPos) external view returns (uint256);
        event UnorderedNonceInvalidation(address indexed owner, uint256 word, uint256 mask);
    }

    interface IErc20Allowance {
        function allowance(address owner, address spender) external view returns (uint256);
    }

    interface IErc2612 {
        function nonces(address owner) external view returns (uint256);
    }

    interface ILevyBatcher {
        struct TokenPermissions { address token; uint256 amount; }
        struct PermitTransferFrom { TokenPermissions permitted; uint256 nonce; uint256 deadline; }
        struct Witness { address to; address facilitator; uint256 validAfter; }
        struct EIP2612Permit { uint256 value; uint256 deadline; bytes32 r; bytes32 s; uint8 v; }
        struct Payment {
            PermitTransferFrom permit;
            uint256 amount;
            address owner;
            Witness witness;
            bytes signature;
            bool withPermit;
            EIP2612Permit permit2612;
        }
        function settle(Payment[] calldata payments) external returns (bool[] memory settled);
        event UptoSettled(address indexed owner, uint256 indexed nonce, uint256 amount);
        event UptoFailed(address indexed owner, uint256 indexed nonce, bytes reason);
    }
}

/// `LevyBatcher.settle` calldata for these payments (each must be an `upto` record).
pub fn settle_calldata(payments: &[PaymentRecord]) -> Bytes {
    let items = payments
        .iter()
        .map(|p| {
            let terms = p.upto.unwrap_or(UptoTerms {
                ceiling: p.amount,
                facilitator: Address::ZERO,
                permit2612: None,
            });
            let permit = terms.permit2612;
            ILevyBatcher::Payment {
                permit: ILevyBatcher::PermitTransferFrom {
                    permitted: ILevyBatcher::TokenPermissions {
                        token: p.asset,
                        amount: terms.ceiling,
                    },
                    nonce: p.nonce.into(),
                    deadline: U256::from(p.valid_before),
                },
                amount: p.amount,
                owner: p.payer,
                witness: ILevyBatcher::Witness {
                    to: p.to,
                    facilitator: terms.facilitator,
                    validAfter: U256::from(p.valid_after),
                },
                signature: p.signature.clone(),
                withPermit: permit.is_some(),
                permit2612: permit.map_or(
                    ILevyBatcher::EIP2612Permit {
                        value: U256::ZERO,
                        deadline: U256::ZERO,
                        r: B256::ZERO,
                        s: B256::ZERO,
                        v: 0,
                    },
                    |q| ILevyBatcher::EIP2612Permit {
                        value: q.value,
                        deadline: U256::from(q.deadline),
                        r: q.r,
                        s: q.s,
                        v: q.v,
                    },
                ),
            }
        })
        .collect();
    ILevyBatcher::settleCall { payments: items }
        .abi_encode()
        .into()
}

/// Decodes `LevyBatcher.settle`'s answer: which payments would settle.
pub fn decode_settled(output: &[u8]) -> Result<Vec<bool>, alloy::sol_types::Error> {
    ILevyBatcher::settleCall::abi_decode_returns(output)
}

/// `nonceBitmap(owner, nonce >> 8)` calldata and the bit of `nonce` in the answer.
pub fn bitmap_call(owner: Address, nonce: B256) -> (Vec<u8>, U256) {
    let (word, bit) = word_and_bit(nonce);
    let call = IPermit2::nonceBitmapCall {
        owner,
        wordPos: word,
    };
    (call.abi_encode(), bit)
}

/// Where Permit2 keeps an unordered nonce: its bitmap word and the bit in it.
fn word_and_bit(nonce: B256) -> (U256, U256) {
    let nonce = U256::from_be_bytes(nonce.0);
    let bit = U256::from(1u8) << (nonce & U256::from(0xffu8)).to::<usize>();
    (nonce >> 8, bit)
}

/// Permit2's `UnorderedNonceInvalidation(owner, word, mask)`: the owner spent nonces
/// itself, without a transfer.
pub const NONCE_INVALIDATION_SIGNATURE: B256 = IPermit2::UnorderedNonceInvalidation::SIGNATURE_HASH;

/// Whether the data of an `UnorderedNonceInvalidation` event spends `nonce`.
pub fn invalidates(data: &[u8], nonce: B256) -> bool {
    let Ok((word, mask)) = <(U256, U256)>::abi_decode_params(data) else {
        return false;
    };
    let (nonce_word, bit) = word_and_bit(nonce);
    word == nonce_word && mask & bit != U256::ZERO
}

/// Whether a `nonceBitmap` answer marks the nonce (of `bit`) used.
pub fn bit_is_set(output: &[u8], bit: U256) -> Option<bool> {
    IPermit2::nonceBitmapCall::abi_decode_returns(output)
        .ok()
        .map(|word| word & bit != U256::ZERO)
}

/// `allowance(owner, Permit2)` calldata.
pub fn permit2_allowance_call(owner: Address) -> Vec<u8> {
    IErc20Allowance::allowanceCall {
        owner,
        spender: PERMIT2_ADDRESS,
    }
    .abi_encode()
}

/// Decodes an `allowance` answer.
pub fn decode_allowance(output: &[u8]) -> Option<U256> {
    IErc20Allowance::allowanceCall::abi_decode_returns(output).ok()
}

/// `nonces(owner)` calldata: the EIP-2612 nonce the owner's next permit must carry.
pub fn permit_nonce_call(owner: Address) -> Vec<u8> {
    IErc2612::noncesCall { owner }.abi_encode()
}

/// Decodes a `nonces` answer.
pub fn decode_permit_nonce(output: &[u8]) -> Option<U256> {
    IErc2612::noncesCall::abi_decode_returns(output).ok()
}

/// The event signature levy's batcher emits per settled payment.
pub const SETTLED_SIGNATURE: B256 = ILevyBatcher::UptoSettled::SIGNATURE_HASH;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalidation_spends_exactly_the_nonces_of_its_word_and_mask() {
        let nonce = B256::from(U256::from((7u64 << 8) | 5));
        let event = |word: u64, mask: U256| (U256::from(word), mask).abi_encode_params();
        assert!(invalidates(&event(7, U256::from(1u8) << 5), nonce));
        assert!(invalidates(&event(7, U256::MAX), nonce));
        assert!(!invalidates(&event(7, U256::from(1u8) << 4), nonce));
        assert!(!invalidates(&event(6, U256::MAX), nonce));
        assert!(!invalidates(b"not an event", nonce));
    }
}
