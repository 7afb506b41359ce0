//! Deploying levy's `upto` batcher on a network (`levy deploy-batcher`): the compiled
//! `LevyBatcher` (contracts/out), constructed with the settler's address as its only caller
//! and x402's upto proxy as its target, sent from the settler key. The operator then names
//! it as `networks.<name>.batcher`.

use std::time::Duration;

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, Bytes, B256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolValue;

/// The compiled batcher, as `npm --prefix contracts run build` writes it.
const ARTIFACT: &str = include_str!("../../contracts/out/LevyBatcher.json");

/// How long to wait for the deployment's receipt.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// Why a deployment did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("`{0}` is not an http(s) RPC URL")]
    BadUrl(String),
    #[error("the built-in LevyBatcher artifact is unreadable: {0}")]
    Artifact(String),
    #[error(
        "x402's upto proxy has no code at {0} on this chain: metered payments cannot settle here"
    )]
    NoProxy(Address),
    #[error("RPC: {0}")]
    Rpc(String),
    #[error("the deployment transaction {0} reverted")]
    Reverted(B256),
}

/// A deployed batcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deployed {
    pub address: Address,
    pub transaction: B256,
    pub chain_id: u64,
}

/// The batcher's creation code with its constructor arguments (`owner`, `proxy`).
pub fn creation_code(owner: Address, proxy: Address) -> Result<Bytes, DeployError> {
    let artifact: serde_json::Value =
        serde_json::from_str(ARTIFACT).map_err(|e| DeployError::Artifact(e.to_string()))?;
    let hex = artifact["bytecode"]
        .as_str()
        .ok_or_else(|| DeployError::Artifact("no `bytecode`".into()))?;
    let mut code = alloy::primitives::hex::decode(hex)
        .map_err(|e| DeployError::Artifact(format!("bytecode: {e}")))?;
    code.extend((owner, proxy).abi_encode_params());
    Ok(code.into())
}

/// Deploys a batcher owned by `settler` that settles through `proxy`, and waits for it.
pub async fn deploy_batcher(
    rpc_url: &str,
    settler: PrivateKeySigner,
    proxy: Address,
) -> Result<Deployed, DeployError> {
    let url = rpc_url
        .parse()
        .map_err(|_| DeployError::BadUrl(rpc_url.to_owned()))?;
    let owner = settler.address();
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(settler))
        .connect_http(url);
    let rpc = |e: &dyn std::fmt::Display| DeployError::Rpc(e.to_string());
    if provider
        .get_code_at(proxy)
        .await
        .map_err(|e| rpc(&e))?
        .is_empty()
    {
        return Err(DeployError::NoProxy(proxy));
    }
    let chain_id = provider.get_chain_id().await.map_err(|e| rpc(&e))?;
    let request = TransactionRequest::default().with_deploy_code(creation_code(owner, proxy)?);
    let pending = provider
        .send_transaction(request)
        .await
        .map_err(|e| rpc(&e))?;
    let transaction = *pending.tx_hash();
    let receipt = pending
        .with_timeout(Some(RECEIPT_TIMEOUT))
        .get_receipt()
        .await
        .map_err(|e| rpc(&e))?;
    match receipt.contract_address {
        Some(address) if receipt.status() => Ok(Deployed {
            address,
            transaction,
            chain_id,
        }),
        _ => Err(DeployError::Reverted(transaction)),
    }
}
