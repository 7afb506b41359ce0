// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title BatchReader
/// @notice levy's pre-check of a settlement batch in one `eth_call` without being deployed:
/// levy sends this contract's creation code with `(reads, accounts)` appended, and the
/// constructor returns `(block.number, results, codeLengths)`: each read's success and answer
/// (a static call, allowed to fail: the token's nonce state and balance reads), and the code
/// size of each account. A payer whose account has code (a contract wallet, or an EIP-7702
/// delegation) has its signatures judged by that code on chain, so its batch is simulated
/// before it is sent; no account's code is run here.
contract BatchReader {
    struct Read {
        address target;
        bytes callData;
    }

    struct Result {
        bool success;
        bytes returnData;
    }

    constructor(Read[] memory reads, address[] memory accounts) {
        Result[] memory results = new Result[](reads.length);
        for (uint256 i = 0; i < reads.length; i++) {
            (bool ok, bytes memory data) = reads[i].target.staticcall(reads[i].callData);
            results[i] = Result(ok, data);
        }
        uint256[] memory lengths = new uint256[](accounts.length);
        for (uint256 i = 0; i < accounts.length; i++) {
            lengths[i] = accounts[i].code.length;
        }
        bytes memory answer = abi.encode(block.number, results, lengths);
        assembly {
            return(add(answer, 32), mload(answer))
        }
    }
}
