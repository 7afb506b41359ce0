// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title TestWallet
/// @notice A minimal contract wallet for levy's tests: one owner key, EIP-1271 signatures
/// (the owner's ECDSA signature of the hash). Deployed through TestWalletFactory with CREATE2,
/// so its address is known before it exists (ERC-6492 counterfactual wallets).
contract TestWallet {
    address public immutable owner;

    constructor(address owner_) {
        owner = owner_;
    }

    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        if (signature.length != 65) return 0xffffffff;
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (v < 27) v += 27;
        address recovered = ecrecover(hash, v, r, s);
        return recovered != address(0) && recovered == owner ? bytes4(0x1626ba7e) : bytes4(0xffffffff);
    }
}

/// @title TestWalletFactory
/// @notice Deploys TestWallets at addresses fixed by (owner, salt).
contract TestWalletFactory {
    function deploy(address owner, bytes32 salt) external returns (address) {
        address wallet = walletAddress(owner, salt);
        if (wallet.code.length == 0) {
            new TestWallet{salt: salt}(owner);
        }
        return wallet;
    }

    function walletAddress(address owner, bytes32 salt) public view returns (address) {
        bytes32 codeHash = keccak256(abi.encodePacked(type(TestWallet).creationCode, abi.encode(owner)));
        return address(uint160(uint256(keccak256(abi.encodePacked(bytes1(0xff), address(this), salt, codeHash)))));
    }
}
