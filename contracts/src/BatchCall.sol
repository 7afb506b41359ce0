// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title BatchCall
/// @notice Multicall3's `aggregate3` and `getBlockNumber`, for levy's test chain. On real
/// networks levy uses the canonical Multicall3 deployment, which has the same functions.
contract BatchCall {
    struct Call3 {
        address target;
        bool allowFailure;
        bytes callData;
    }

    struct Result {
        bool success;
        bytes returnData;
    }

    /// @notice Calls each target in order. A failing call reverts the whole batch unless its
    /// `allowFailure` is set, in which case its result records the failure.
    function aggregate3(Call3[] calldata calls) external payable returns (Result[] memory returnData) {
        returnData = new Result[](calls.length);
        for (uint256 i = 0; i < calls.length; i++) {
            (bool success, bytes memory ret) = calls[i].target.call(calls[i].callData);
            require(success || calls[i].allowFailure, "Multicall3: call failed");
            returnData[i] = Result(success, ret);
        }
    }

    /// @notice The number of the block the call runs in (read in the same `aggregate3` call
    /// as a payer's balance, it says which block the balance is from).
    function getBlockNumber() external view returns (uint256 blockNumber) {
        blockNumber = block.number;
    }
}
