// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {Permit2} from "./Permit2.sol";
import {UptoPermit2Proxy} from "./UptoPermit2Proxy.sol";

/// @title LevyBatcher
/// @notice levy's `upto` settler: the address levy names as `facilitatorAddress`, so the upto
/// proxy accepts its `settle` calls, and many payments settle in one transaction. Only its
/// owner (levy's settler key) may call it: anyone else could settle a payer's authorization
/// for any amount up to its ceiling. Each payment settles or fails alone; a settled one emits
/// `UptoSettled` with its owner and Permit2 nonce (the proxy's own event names neither), a
/// failed one `UptoFailed` with the revert data.
contract LevyBatcher {
    struct Payment {
        Permit2.PermitTransferFrom permit;
        uint256 amount;
        address owner;
        UptoPermit2Proxy.Witness witness;
        bytes signature;
        /// Whether to settle through `settleWithPermit` with `permit2612`.
        bool withPermit;
        UptoPermit2Proxy.EIP2612Permit permit2612;
    }

    address public immutable owner;
    UptoPermit2Proxy public immutable proxy;

    event UptoSettled(address indexed owner, uint256 indexed nonce, uint256 amount);
    event UptoFailed(address indexed owner, uint256 indexed nonce, bytes reason);

    constructor(address owner_, UptoPermit2Proxy proxy_) {
        owner = owner_;
        proxy = proxy_;
    }

    /// @notice Settles each payment through the upto proxy; returns which succeeded.
    function settle(Payment[] calldata payments) external returns (bool[] memory settled) {
        require(msg.sender == owner, "LevyBatcher: not the owner");
        settled = new bool[](payments.length);
        for (uint256 i = 0; i < payments.length; i++) {
            Payment calldata p = payments[i];
            bool ok;
            bytes memory reason;
            if (p.withPermit) {
                try proxy.settleWithPermit(p.permit2612, p.permit, p.amount, p.owner, p.witness, p.signature) {
                    ok = true;
                } catch (bytes memory data) {
                    reason = data;
                }
            } else {
                try proxy.settle(p.permit, p.amount, p.owner, p.witness, p.signature) {
                    ok = true;
                } catch (bytes memory data) {
                    reason = data;
                }
            }
            settled[i] = ok;
            if (ok) {
                emit UptoSettled(p.owner, p.permit.nonce, p.amount);
            } else {
                emit UptoFailed(p.owner, p.permit.nonce, reason);
            }
        }
    }
}
