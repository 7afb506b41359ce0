//! Why a chain operation failed, sorted by what the failure says about a payment.

use alloy::transports::{RpcError, TransportError};

use crate::scheme::SchemeError;

/// Why a chain operation failed, sorted by what the failure says about a payment.
///
/// Only [`ChainError::Reverted`] is an answer about the call itself (the node ran it and it
/// reverted); [`ChainError::Unsupported`] and the setup errors say something about levy's
/// configuration; [`ChainError::Node`] is the node refusing the request as made; the rest is
/// levy not knowing ([`ChainError::is_unknown`]). None of them is a verdict on a payer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChainError {
    #[error("RPC call `{0}` timed out")]
    Timeout(&'static str),
    /// No usable answer: a refused or reset connection, an HTTP error status (429, 5xx), a
    /// node-side error such as "header not found" or a rate limit, or a body that is not
    /// JSON-RPC.
    #[error("RPC call `{call}` failed: {message}")]
    Transient { call: &'static str, message: String },
    /// The node says the method does not exist (JSON-RPC -32601 or its words for it).
    #[error("the node has no `{call}`: {message}")]
    Unsupported { call: &'static str, message: String },
    /// The node answered the request with a JSON-RPC error that is none of the above (a log
    /// range it will not serve, a request it finds invalid): it will likely answer so again.
    #[error("RPC call `{call}` refused by the node ({code}): {message}")]
    Node {
        call: &'static str,
        code: i64,
        message: String,
    },
    /// The node ran the call and it reverted (an `eth_call` or a gas estimate).
    #[error("`{call}` reverted: {message}")]
    Reverted { call: &'static str, message: String },
    #[error("unexpected chain answer: {0}")]
    Decode(String),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("bad RPC URL: {0}")]
    Url(String),
    #[error("the batch needs {gas} gas, too much of the block gas limit {block}")]
    TooMuchGas { gas: u64, block: u64 },
    #[error(transparent)]
    Scheme(#[from] SchemeError),
}

impl ChainError {
    /// Whether the failure only says levy could not find out (a time-out, a transport
    /// error or a passing node condition, an answer it could not read): retry later,
    /// count nothing.
    pub fn is_unknown(&self) -> bool {
        matches!(
            self,
            ChainError::Timeout(_) | ChainError::Transient { .. } | ChainError::Decode(_)
        )
    }

    /// Sorts an RPC client error by what it says: "method not found" is
    /// [`ChainError::Unsupported`], an execution revert is [`ChainError::Reverted`], a
    /// transport failure, an HTTP error status, a malformed body or a JSON-RPC error that
    /// names a passing condition (a rate limit, a block the node has not seen yet, an
    /// internal error) is [`ChainError::Transient`], and any other JSON-RPC error is
    /// [`ChainError::Node`].
    pub fn classify(call: &'static str, error: &TransportError) -> ChainError {
        let message = error.to_string();
        let RpcError::ErrorResp(payload) = error else {
            return ChainError::Transient { call, message };
        };
        let words = payload.message.to_ascii_lowercase();
        let unsupported = payload.code == -32601
            || [
                "method not found",
                "does not exist",
                "unsupported method",
                "not supported",
            ]
            .iter()
            .any(|w| words.contains(w));
        let reverted = payload.code == 3
            || ["execution reverted", "revert", "out of gas"]
                .iter()
                .any(|w| words.contains(w));
        let passing = matches!(payload.code, -32005 | -32007 | -32016 | -32603)
            || [
                "limit",
                "header not found",
                "unknown block",
                "timeout",
                "timed out",
                "busy",
                "try again",
                "unavailable",
                "capacity",
            ]
            .iter()
            .any(|w| words.contains(w));
        if unsupported {
            ChainError::Unsupported { call, message }
        } else if reverted {
            ChainError::Reverted { call, message }
        } else if passing {
            ChainError::Transient { call, message }
        } else {
            ChainError::Node {
                call,
                code: payload.code,
                message,
            }
        }
    }
}
