// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title CodeSizes
/// @notice The code size of each of a batch's payers in one `eth_call` without being deployed:
/// levy sends this contract's creation code with `(address[] accounts)` appended, and the
/// constructor returns `uint256[]`, one size per account. A payer whose account has code (a
/// contract wallet, or an EIP-7702 delegation) has its signatures judged by that code on
/// chain, so its batch is simulated before it is sent. No account's code is run.
contract CodeSizes {
    constructor(address[] memory accounts) {
        uint256[] memory sizes = new uint256[](accounts.length);
        for (uint256 i = 0; i < accounts.length; i++) {
            sizes[i] = accounts[i].code.length;
        }
        bytes memory answer = abi.encode(sizes);
        assembly {
            return(add(answer, 32), mload(answer))
        }
    }
}
