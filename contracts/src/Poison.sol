// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import "./TestWallet.sol";

/// @title GasPriceDelegate
/// @notice Account code for levy's poison-payment tests, what an EIP-7702 delegation can give
/// an EOA: through EIP-1271 it accepts any signature when the transaction pays no gas price
/// (as a simulation without fees runs it) and burns all the gas it is given otherwise.
contract GasPriceDelegate {
    function isValidSignature(bytes32, bytes calldata) external view returns (bytes4) {
        if (tx.gasprice == 0) return 0x1626ba7e;
        uint256 spun;
        while (gasleft() > 0) {
            spun++;
        }
        return bytes4(uint32(spun));
    }
}

/// @title SpinningWalletFactory
/// @notice Deploys TestWallets through a TestWalletFactory of its own (ERC-6492
/// counterfactual wallets), except when called by `spinFor` (the multicall levy settles
/// through): then it burns all the gas it is given. A signature check that calls it from
/// elsewhere sees a valid wallet.
contract SpinningWalletFactory {
    address public immutable spinFor;
    TestWalletFactory public immutable wallets;

    constructor(address spinFor_) {
        spinFor = spinFor_;
        wallets = new TestWalletFactory();
    }

    function deploy(address owner, bytes32 salt) external returns (address) {
        if (msg.sender == spinFor) {
            uint256 spun;
            while (gasleft() > 0) {
                spun++;
            }
        }
        return wallets.deploy(owner, salt);
    }

    function walletAddress(address owner, bytes32 salt) external view returns (address) {
        return wallets.walletAddress(owner, salt);
    }
}
