// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

interface IToken {
    function balanceOf(address account) external view returns (uint256);
    function transfer(address to, uint256 value) external returns (bool);
}

/// @notice What a deposit collector does: moves `amount` of `token` from `payer` to the
/// settlement contract, authorized by `data`, bound to `channelId`.
interface IDepositCollector {
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata data)
        external;
}

/// @title BatchSettlement
/// @notice x402's `batch-settlement` escrow (`x402BatchSettlement`), written for levy's test chain
/// from the scheme's published interface and placed at its canonical address. A payer deposits
/// into a channel identified by the EIP-712 hash of its `ChannelConfig`; the receiver claims the
/// payer's cumulative vouchers, many channels per transaction, and sweeps claimed funds with
/// `settle`. The payer can leave only through a withdrawal that waits `withdrawDelay` seconds,
/// during which the receiver can still claim. The receiver (or its authorizer's signature) can
/// refund unclaimed funds at any time.
contract BatchSettlement {
    struct ChannelConfig {
        address payer;
        address payerAuthorizer;
        address receiver;
        address receiverAuthorizer;
        address token;
        uint40 withdrawDelay;
        bytes32 salt;
    }

    struct Voucher {
        ChannelConfig channel;
        uint128 maxClaimableAmount;
    }

    struct VoucherClaim {
        Voucher voucher;
        bytes signature;
        uint128 totalClaimed;
    }

    struct Channel {
        uint128 balance;
        uint128 totalClaimed;
    }

    struct PendingWithdrawal {
        uint128 amount;
        uint40 initiatedAt;
    }

    struct Receiver {
        uint128 totalClaimed;
        uint128 totalSettled;
    }

    uint40 public constant MIN_WITHDRAW_DELAY = 900;
    uint40 public constant MAX_WITHDRAW_DELAY = 2_592_000;

    bytes32 public constant CHANNEL_CONFIG_TYPEHASH = keccak256(
        "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
    );
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)");
    bytes32 public constant REFUND_TYPEHASH = keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)");
    bytes32 public constant CLAIM_ENTRY_TYPEHASH =
        keccak256("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)");
    bytes32 public constant CLAIM_BATCH_TYPEHASH = keccak256(
        "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
    );
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    uint256 private constant SECP256K1N_HALF = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    bytes4 private constant ERC1271_MAGIC = 0x1626ba7e;

    mapping(bytes32 => Channel) public channels;
    mapping(bytes32 => PendingWithdrawal) public pendingWithdrawals;
    mapping(address => mapping(address => Receiver)) public receivers;
    mapping(bytes32 => uint256) public refundNonce;

    bool private transient entered;

    event Deposited(bytes32 indexed channelId, address indexed payer, address collector, uint128 amount);
    event Claimed(bytes32 indexed channelId, address indexed receiver, uint128 amount, uint128 totalClaimed);
    event Settled(address indexed receiver, address indexed token, address indexed sender, uint128 amount);
    event WithdrawInitiated(bytes32 indexed channelId, uint128 amount, uint40 initiatedAt);
    event Withdrawn(bytes32 indexed channelId, uint128 amount);
    event Refunded(bytes32 indexed channelId, uint128 amount, uint256 nonce);

    error Reentered();
    error InvalidConfig();
    error ZeroAmount();
    error DepositShort(uint256 received);
    error NotReceiver();
    error NotPayer();
    error InvalidSignature();
    error ClaimAboveVoucher();
    error ClaimNotIncreasing(bytes32 channelId, uint128 current);
    error ClaimAboveBalance(bytes32 channelId);
    error MixedAuthorizers();
    error NothingPending();
    error WithdrawTooEarly(uint256 availableAt);
    error BadRefundNonce(uint256 expected);
    error TransferFailed();

    modifier nonReentrant() {
        if (entered) revert Reentered();
        entered = true;
        _;
        entered = false;
    }

    // ---- deposits and withdrawals (the payer's side) ----

    /// @notice Credits `amount` to the channel of `config`, pulled from the payer by `collector`.
    function deposit(ChannelConfig calldata config, uint128 amount, address collector, bytes calldata collectorData)
        external
        nonReentrant
    {
        _validate(config);
        if (amount == 0) revert ZeroAmount();
        bytes32 id = getChannelId(config);
        uint256 before = IToken(config.token).balanceOf(address(this));
        IDepositCollector(collector).collect(config.payer, config.token, amount, id, collectorData);
        uint256 received = IToken(config.token).balanceOf(address(this)) - before;
        if (received != amount) revert DepositShort(received);
        channels[id].balance += amount;
        emit Deposited(id, config.payer, collector, amount);
    }

    /// @notice The payer asks for `amount` back; it can be taken after the withdraw delay.
    function initiateWithdraw(ChannelConfig calldata config, uint128 amount) external {
        if (msg.sender != config.payer && msg.sender != config.payerAuthorizer) revert NotPayer();
        if (amount == 0) revert ZeroAmount();
        bytes32 id = getChannelId(config);
        uint40 now_ = uint40(block.timestamp);
        pendingWithdrawals[id] = PendingWithdrawal(amount, now_);
        emit WithdrawInitiated(id, amount, now_);
    }

    /// @notice Pays out a withdrawal whose delay has passed, up to what is still unclaimed.
    function finalizeWithdraw(ChannelConfig calldata config) external nonReentrant {
        bytes32 id = getChannelId(config);
        PendingWithdrawal memory pending = pendingWithdrawals[id];
        if (pending.initiatedAt == 0) revert NothingPending();
        uint256 availableAt = uint256(pending.initiatedAt) + config.withdrawDelay;
        if (block.timestamp < availableAt) revert WithdrawTooEarly(availableAt);
        delete pendingWithdrawals[id];
        uint128 amount = _release(id, config, pending.amount);
        emit Withdrawn(id, amount);
    }

    // ---- claims and refunds (the receiver's side) ----

    /// @notice Claims vouchers; the caller is each channel's receiver or receiver authorizer.
    function claim(VoucherClaim[] calldata voucherClaims) external nonReentrant {
        for (uint256 i = 0; i < voucherClaims.length; i++) {
            ChannelConfig calldata config = voucherClaims[i].voucher.channel;
            if (msg.sender != config.receiver && msg.sender != config.receiverAuthorizer) revert NotReceiver();
            _claim(voucherClaims[i]);
        }
    }

    /// @notice Claims vouchers on the signature of their (one) receiver authorizer over the
    /// `ClaimBatch`; anyone may send it.
    function claimWithSignature(VoucherClaim[] calldata voucherClaims, bytes calldata authorizerSignature)
        external
        nonReentrant
    {
        if (voucherClaims.length == 0) return;
        address authorizer = voucherClaims[0].voucher.channel.receiverAuthorizer;
        for (uint256 i = 1; i < voucherClaims.length; i++) {
            if (voucherClaims[i].voucher.channel.receiverAuthorizer != authorizer) revert MixedAuthorizers();
        }
        if (!_validSignature(authorizer, getClaimBatchDigest(voucherClaims), authorizerSignature)) {
            revert InvalidSignature();
        }
        for (uint256 i = 0; i < voucherClaims.length; i++) {
            _claim(voucherClaims[i]);
        }
    }

    /// @notice Sends a receiver everything claimed for it in `token` and not yet sent.
    function settle(address receiver, address token) external nonReentrant {
        Receiver storage r = receivers[receiver][token];
        uint128 amount = r.totalClaimed - r.totalSettled;
        if (amount == 0) return;
        r.totalSettled = r.totalClaimed;
        _send(token, receiver, amount);
        emit Settled(receiver, token, msg.sender, amount);
    }

    /// @notice Returns up to `amount` of the unclaimed balance to the payer; the caller is the
    /// receiver or its authorizer.
    function refund(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        if (msg.sender != config.receiver && msg.sender != config.receiverAuthorizer) revert NotReceiver();
        _refund(config, amount);
    }

    /// @notice `refund` on the receiver authorizer's signature over `Refund(channelId, nonce,
    /// amount)`; anyone may send it, once per nonce.
    function refundWithSignature(
        ChannelConfig calldata config,
        uint128 amount,
        uint256 nonce,
        bytes calldata receiverAuthorizerSignature
    ) external nonReentrant {
        bytes32 id = getChannelId(config);
        if (nonce != refundNonce[id]) revert BadRefundNonce(refundNonce[id]);
        if (!_validSignature(config.receiverAuthorizer, getRefundDigest(id, nonce, amount), receiverAuthorizerSignature))
        {
            revert InvalidSignature();
        }
        _refund(config, amount);
    }

    /// @notice Runs several calls on this contract in one transaction.
    function multicall(bytes[] calldata data) external returns (bytes[] memory results) {
        results = new bytes[](data.length);
        for (uint256 i = 0; i < data.length; i++) {
            (bool ok, bytes memory answer) = address(this).delegatecall(data[i]);
            if (!ok) {
                assembly {
                    revert(add(answer, 0x20), mload(answer))
                }
            }
            results[i] = answer;
        }
    }

    // ---- EIP-712 ----

    function domainSeparator() public view returns (bytes32) {
        return keccak256(
            abi.encode(
                DOMAIN_TYPEHASH, keccak256("x402 Batch Settlement"), keccak256("1"), block.chainid, address(this)
            )
        );
    }

    function getChannelId(ChannelConfig calldata config) public view returns (bytes32) {
        return _typed(
            keccak256(
                abi.encode(
                    CHANNEL_CONFIG_TYPEHASH,
                    config.payer,
                    config.payerAuthorizer,
                    config.receiver,
                    config.receiverAuthorizer,
                    config.token,
                    config.withdrawDelay,
                    config.salt
                )
            )
        );
    }

    function getVoucherDigest(bytes32 channelId, uint128 maxClaimableAmount) public view returns (bytes32) {
        return _typed(keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, maxClaimableAmount)));
    }

    function getRefundDigest(bytes32 channelId, uint256 nonce, uint128 amount) public view returns (bytes32) {
        return _typed(keccak256(abi.encode(REFUND_TYPEHASH, channelId, nonce, amount)));
    }

    function getClaimBatchDigest(VoucherClaim[] calldata voucherClaims) public view returns (bytes32) {
        bytes32[] memory entries = new bytes32[](voucherClaims.length);
        for (uint256 i = 0; i < voucherClaims.length; i++) {
            entries[i] = keccak256(
                abi.encode(
                    CLAIM_ENTRY_TYPEHASH,
                    getChannelId(voucherClaims[i].voucher.channel),
                    voucherClaims[i].voucher.maxClaimableAmount,
                    voucherClaims[i].totalClaimed
                )
            );
        }
        return _typed(keccak256(abi.encode(CLAIM_BATCH_TYPEHASH, keccak256(abi.encodePacked(entries)))));
    }

    // ---- internals ----

    function _validate(ChannelConfig calldata config) private pure {
        if (
            config.payer == address(0) || config.receiver == address(0) || config.receiverAuthorizer == address(0)
                || config.token == address(0) || config.withdrawDelay < MIN_WITHDRAW_DELAY
                || config.withdrawDelay > MAX_WITHDRAW_DELAY
        ) revert InvalidConfig();
    }

    function _claim(VoucherClaim calldata c) private {
        ChannelConfig calldata config = c.voucher.channel;
        bytes32 id = getChannelId(config);
        address voucherSigner = config.payerAuthorizer == address(0) ? config.payer : config.payerAuthorizer;
        if (!_validSignature(voucherSigner, getVoucherDigest(id, c.voucher.maxClaimableAmount), c.signature)) {
            revert InvalidSignature();
        }
        if (c.totalClaimed > c.voucher.maxClaimableAmount) revert ClaimAboveVoucher();
        Channel storage ch = channels[id];
        if (c.totalClaimed <= ch.totalClaimed) revert ClaimNotIncreasing(id, ch.totalClaimed);
        if (c.totalClaimed > ch.balance) revert ClaimAboveBalance(id);
        uint128 amount = c.totalClaimed - ch.totalClaimed;
        ch.totalClaimed = c.totalClaimed;
        receivers[config.receiver][config.token].totalClaimed += amount;
        emit Claimed(id, config.receiver, amount, c.totalClaimed);
    }

    function _refund(ChannelConfig calldata config, uint128 amount) private {
        bytes32 id = getChannelId(config);
        uint256 nonce = refundNonce[id];
        refundNonce[id] = nonce + 1;
        uint128 refunded = _release(id, config, amount);
        delete pendingWithdrawals[id];
        emit Refunded(id, refunded, nonce);
    }

    /// Pays up to `amount` of a channel's unclaimed balance back to its payer.
    function _release(bytes32 id, ChannelConfig calldata config, uint128 amount) private returns (uint128) {
        Channel storage ch = channels[id];
        uint128 unclaimed = ch.balance - ch.totalClaimed;
        if (amount > unclaimed) amount = unclaimed;
        ch.balance -= amount;
        if (amount > 0) _send(config.token, config.payer, amount);
        return amount;
    }

    function _send(address token, address to, uint256 amount) private {
        if (!IToken(token).transfer(to, amount)) revert TransferFailed();
    }

    function _typed(bytes32 structHash) private view returns (bytes32) {
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// ECDSA for a signer without code, EIP-1271 for one with code.
    function _validSignature(address signer, bytes32 digest, bytes calldata signature) private view returns (bool) {
        if (signer.code.length > 0) {
            (bool ok, bytes memory answer) = signer.staticcall(abi.encodeWithSelector(ERC1271_MAGIC, digest, signature));
            return ok && answer.length >= 32 && bytes4(answer) == ERC1271_MAGIC;
        }
        if (signature.length != 65) return false;
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (uint256(s) > SECP256K1N_HALF || (v != 27 && v != 28)) return false;
        address recovered = ecrecover(digest, v, r, s);
        return recovered != address(0) && recovered == signer;
    }
}

interface IReceiveWithAuthorization {
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) external;
}

/// @title ERC3009DepositCollector
/// @notice Pulls a batch-settlement deposit with the payer's ERC-3009 `ReceiveWithAuthorization`
/// (to this collector, nonce `keccak256(abi.encode(channelId, salt))`, so the signature funds one
/// channel only) and hands it to the settlement contract, its only caller.
contract ERC3009DepositCollector {
    address public constant SETTLEMENT = 0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003;

    error NotSettlement();
    error TransferFailed();

    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata data) external {
        if (msg.sender != SETTLEMENT) revert NotSettlement();
        (uint256 validAfter, uint256 validBefore, uint256 salt, bytes memory signature) =
            abi.decode(data, (uint256, uint256, uint256, bytes));
        bytes32 nonce = keccak256(abi.encode(channelId, salt));
        IReceiveWithAuthorization(token).receiveWithAuthorization(
            payer, address(this), amount, validAfter, validBefore, nonce, signature
        );
        if (!IToken(token).transfer(SETTLEMENT, amount)) revert TransferFailed();
    }
}
