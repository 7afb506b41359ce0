// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title SigValidator
/// @notice Checks a signature for any signer in one `eth_call` without being deployed: levy
/// sends this contract's creation code with `(signer, hash, signature)` appended, and the
/// constructor returns one byte, 0x01 when the signature is valid. It accepts ECDSA for a
/// signer without code, EIP-1271 for a deployed contract wallet, and ERC-6492 wrapped
/// signatures of a wallet not deployed yet (it runs the wrapped factory call first, inside the
/// call, so nothing is deployed for real).
contract SigValidator {
    bytes32 private constant ERC6492_SUFFIX = 0x6492649264926492649264926492649264926492649264926492649264926492;
    bytes4 private constant ERC1271_MAGIC = 0x1626ba7e;
    uint256 private constant SECP256K1N_HALF = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    constructor(address signer, bytes32 hash, bytes memory signature) {
        bool valid = _isValid(signer, hash, signature);
        assembly {
            mstore(0, valid)
            return(31, 1)
        }
    }

    function _isValid(address signer, bytes32 hash, bytes memory signature) private returns (bool) {
        bytes memory inner = signature;
        if (_wrapped(signature)) {
            bytes memory body = new bytes(signature.length - 32);
            for (uint256 i = 0; i < body.length; i++) {
                body[i] = signature[i];
            }
            address factory;
            bytes memory factoryCalldata;
            (factory, factoryCalldata, inner) = abi.decode(body, (address, bytes, bytes));
            if (signer.code.length == 0) {
                (bool deployed,) = factory.call(factoryCalldata);
                if (!deployed) return false;
            }
        }
        if (signer.code.length > 0) {
            (bool ok, bytes memory answer) = signer.staticcall(abi.encodeWithSelector(ERC1271_MAGIC, hash, inner));
            return ok && answer.length >= 32 && bytes4(answer) == ERC1271_MAGIC;
        }
        if (inner.length != 65) return false;
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly {
            r := mload(add(inner, 0x20))
            s := mload(add(inner, 0x40))
            v := byte(0, mload(add(inner, 0x60)))
        }
        if (v < 27) v += 27;
        // As the token checks an EOA's signature: low s, v 27 or 28.
        if (uint256(s) > SECP256K1N_HALF || (v != 27 && v != 28)) return false;
        address recovered = ecrecover(hash, v, r, s);
        return recovered != address(0) && recovered == signer;
    }

    function _wrapped(bytes memory signature) private pure returns (bool) {
        if (signature.length < 32) return false;
        bytes32 suffix;
        assembly {
            suffix := mload(add(signature, mload(signature)))
        }
        return suffix == ERC6492_SUFFIX;
    }
}
