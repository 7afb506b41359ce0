//! The calls an `exact` payment settles with: EIP-3009's `transferWithAuthorization` (the
//! `(v, r, s)` overload, and the `bytes` one for contract wallets), an ERC-6492 wallet's
//! deployment before it, and the token's reads and events levy reconciles from.

use alloy::sol;
use alloy::sol_types::{SolCall, SolValue};
use alloy_primitives::{Address, Bytes, U256};

use crate::record::PaymentRecord;
use crate::scheme::IMulticall3;

sol! {
    interface IEip3009 {
        function balanceOf(address account) external view returns (uint256);
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
        function transferWithAuthorization(
            address from, address to, uint256 value, uint256 validAfter, uint256 validBefore,
            bytes32 nonce, uint8 v, bytes32 r, bytes32 s
        ) external;
        event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
        event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);
    }

    interface IEip3009Bytes {
        function transferWithAuthorization(
            address from, address to, uint256 value, uint256 validAfter, uint256 validBefore,
            bytes32 nonce, bytes signature
        ) external;
    }
}

/// The last 32 bytes of an ERC-6492 wrapped signature.
const ERC6492_SUFFIX: [u8; 32] = [
    0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92,
    0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92,
];

/// `(factory, factory calldata, inner signature)` of an ERC-6492 wrapped signature.
pub fn unwrap_6492(signature: &[u8]) -> Option<(Address, Bytes, Bytes)> {
    let body = signature.strip_suffix(&ERC6492_SUFFIX)?;
    <(Address, Bytes, Bytes)>::abi_decode_params(body).ok()
}

/// The calls that settle one payment: for a wallet not deployed yet (ERC-6492), its factory
/// call first (allowed to fail: it may be deployed by then), then the transfer — the
/// `(v, r, s)` overload for a 65-byte signature, the `bytes` one for anything longer.
pub fn payment_calls(p: &PaymentRecord) -> Vec<IMulticall3::Call3> {
    let mut calls = Vec::with_capacity(2);
    let transfer = match unwrap_6492(&p.signature) {
        Some((factory, deploy, inner)) => {
            calls.push(IMulticall3::Call3 {
                target: factory,
                allowFailure: true,
                callData: deploy,
            });
            bytes_transfer_call(p, inner)
        }
        None if p.signature.len() == 65 => transfer_call(p),
        None => bytes_transfer_call(p, p.signature.clone()),
    };
    calls.push(IMulticall3::Call3 {
        target: p.asset,
        allowFailure: true,
        callData: transfer.into(),
    });
    calls
}

/// `transferWithAuthorization(…, bytes signature)` calldata for one payment.
fn bytes_transfer_call(p: &PaymentRecord, signature: Bytes) -> Vec<u8> {
    IEip3009Bytes::transferWithAuthorizationCall {
        from: p.payer,
        to: p.to,
        value: p.amount,
        validAfter: U256::from(p.valid_after),
        validBefore: U256::from(p.valid_before),
        nonce: p.nonce,
        signature,
    }
    .abi_encode()
}

/// `transferWithAuthorization(…, v, r, s)` calldata for one payment.
pub fn transfer_call(p: &PaymentRecord) -> Vec<u8> {
    let sig = &p.signature;
    let mut r = [0u8; 32];
    let mut s = [0u8; 32];
    let mut v = 0u8;
    if sig.len() == 65 {
        r.copy_from_slice(&sig[..32]);
        s.copy_from_slice(&sig[32..64]);
        v = if sig[64] < 27 { sig[64] + 27 } else { sig[64] };
    }
    IEip3009::transferWithAuthorizationCall {
        from: p.payer,
        to: p.to,
        value: p.amount,
        validAfter: U256::from(p.valid_after),
        validBefore: U256::from(p.valid_before),
        nonce: p.nonce,
        v,
        r: r.into(),
        s: s.into(),
    }
    .abi_encode()
}
