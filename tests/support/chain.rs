//! A real EVM chain for tests: anvil (from the pinned npm package in `contracts/`) on a free
//! loopback port with chain id 84532 (Base Sepolia's), the project's TestUSDC (EIP-3009) and
//! BatchCall (aggregate3) contracts deployed with alloy, and helpers to read and move tokens.
//! TestUSDC is placed at Base Sepolia USDC's real address, so levy's built-in `usdc` and the
//! official clients' default-asset rules apply unchanged.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::future::IntoFuture;

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{keccak256, Address, Bytes, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol;
use alloy::sol_types::{SolCall, SolValue};

use super::free_port;

sol! {
    interface ITestUsdc {
        function mint(address to, uint256 value) external;
        function transfer(address to, uint256 value) external returns (bool);
        function balanceOf(address account) external view returns (uint256);
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
        function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
        function DOMAIN_SEPARATOR() external view returns (bytes32);
        function approve(address spender, uint256 value) external returns (bool);
        function allowance(address owner, address spender) external view returns (uint256);
    }
}

/// Permit2's and x402's upto proxy's canonical addresses, where the harness places the
/// project's implementations.
pub const PERMIT2: Address =
    alloy::primitives::address!("000000000022D473030F116dDEE9F6B43aC78BA3");
pub const UPTO_PROXY: Address =
    alloy::primitives::address!("4020A4f3b7b90ccA423B9fabCc0CE57C6C240002");
/// x402's batch-settlement escrow and its ERC-3009 deposit collector, at their canonical
/// addresses.
pub const BATCH_SETTLEMENT: Address =
    alloy::primitives::address!("4020074e9dF2ce1deE5A9C1b5c3f541D02a10003");
pub const DEPOSIT_COLLECTOR: Address =
    alloy::primitives::address!("4020806089470a89826cB9fB1f4059150b550004");

/// anvil's development keys (public knowledge; test chain only).
pub const KEYS: [&str; 7] = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926e",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
];
/// Circle's USDC on Base Sepolia, where the harness places TestUSDC.
pub const BASE_SEPOLIA_USDC: Address =
    alloy::primitives::address!("036CbD53842c5426634e7929541eC2318f3dCF7e");

/// Key 1 settles; key 2 deploys and mints; keys 0, 3 and 4 pay; 5 and 6 settle for more
/// replicas.
pub const SETTLER_KEY: &str = KEYS[1];
const DEPLOYER_KEY: &str = KEYS[2];

/// A running anvil with the contracts deployed. Killed when dropped.
pub struct TestChain {
    pub rpc_url: String,
    pub usdc: Address,
    pub multicall: Address,
    /// levy's `LevyBatcher`, owned by the settler key (the metered routes' facilitator).
    pub batcher: Address,
    child: Child,
    pub rt: tokio::runtime::Runtime,
    deployer: DynProvider,
}

fn anvil_path() -> PathBuf {
    if let Ok(path) = std::env::var("LEVY_ANVIL") {
        return path.into();
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    assert!(
        path.exists(),
        "anvil is not installed: run `npm ci --prefix contracts` (or set LEVY_ANVIL)"
    );
    path
}

fn artifact(name: &str) -> Bytes {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("contracts/out/{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("artifact JSON");
    json["bytecode"]
        .as_str()
        .expect("bytecode")
        .parse()
        .expect("bytecode hex")
}

pub fn signer(key: &str) -> PrivateKeySigner {
    key.parse().expect("test key")
}

/// A fresh private key nobody else uses, as hex (a payer of its own).
pub fn random_key() -> String {
    format!(
        "0x{}",
        alloy::hex::encode(PrivateKeySigner::random().to_bytes())
    )
}

impl TestChain {
    /// Starts anvil and deploys TestUSDC("USDC", "2") and BatchCall.
    pub fn start() -> TestChain {
        Self::start_on(free_port())
    }

    /// Starts anvil on a given port (for restarts behind a proxy).
    pub fn start_on(port: u16) -> TestChain {
        Self::launch(port, &[])
    }

    /// Starts anvil mining a block every `seconds` instead of one per transaction.
    pub fn with_block_time(seconds: u64) -> TestChain {
        Self::launch(free_port(), &["--block-time", &seconds.to_string()])
    }

    fn launch(port: u16, extra: &[&str]) -> TestChain {
        let child = Command::new(anvil_path())
            .args([
                "--port",
                &port.to_string(),
                "--chain-id",
                "84532",
                "--silent",
                // Keep past states in memory only: by default anvil writes every state
                // beyond its in-memory window under ~/.foundry/anvil/tmp and never
                // removes them when it is killed (gigabytes per full test run).
                "--prune-history",
                "1024",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start anvil");
        let rpc_url = format!("http://127.0.0.1:{port}");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let deployer = ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer(DEPLOYER_KEY)))
            .connect_http(rpc_url.parse().expect("url"))
            .erased();
        let deadline = Instant::now() + Duration::from_secs(20);
        while rt.block_on(deployer.get_chain_id()).is_err() {
            assert!(Instant::now() < deadline, "anvil did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut chain = TestChain {
            rpc_url,
            usdc: Address::ZERO,
            multicall: Address::ZERO,
            batcher: Address::ZERO,
            child,
            rt,
            deployer,
        };
        let mut usdc_code = artifact("TestUSDC").to_vec();
        usdc_code.extend(("USDC".to_owned(), "2".to_owned()).abi_encode_params());
        let deployed = chain.deploy(usdc_code.into());
        chain.usdc = chain.place_at(deployed, BASE_SEPOLIA_USDC, 2);
        chain.multicall = chain.deploy(artifact("BatchCall"));
        let permit2 = chain.deploy(artifact("Permit2"));
        chain.place_at(permit2, PERMIT2, 0);
        let proxy = chain.deploy(artifact("UptoPermit2Proxy"));
        chain.place_at(proxy, UPTO_PROXY, 0);
        let escrow = chain.deploy(artifact("BatchSettlement"));
        chain.place_at(escrow, BATCH_SETTLEMENT, 0);
        let collector = chain.deploy(artifact("ERC3009DepositCollector"));
        chain.place_at(collector, DEPOSIT_COLLECTOR, 0);
        let mut batcher_code = artifact("LevyBatcher").to_vec();
        batcher_code.extend((signer(SETTLER_KEY).address(), UPTO_PROXY).abi_encode_params());
        chain.batcher = chain.deploy(batcher_code.into());
        chain
    }

    /// Copies a deployed contract's code and its first `slots` storage slots to `target`.
    fn place_at(&self, source: Address, target: Address, slots: u64) -> Address {
        self.rt.block_on(async {
            let code = self.deployer.get_code_at(source).await.expect("code");
            let _: serde_json::Value = self
                .deployer
                .raw_request("anvil_setCode".into(), (target, code))
                .await
                .expect("anvil_setCode");
            for slot in 0..slots {
                let value = self
                    .deployer
                    .get_storage_at(source, U256::from(slot))
                    .await
                    .expect("storage");
                let _: serde_json::Value = self
                    .deployer
                    .raw_request(
                        "anvil_setStorageAt".into(),
                        (target, U256::from(slot), B256::from(value)),
                    )
                    .await
                    .expect("anvil_setStorageAt");
            }
        });
        target
    }

    fn deploy(&self, code: Bytes) -> Address {
        let tx = TransactionRequest::default()
            .into_create()
            .input(code.into());
        self.mine(tx, "deploy")
            .contract_address
            .expect("contract address")
    }

    /// Sends `tx` from the deployer and waits for its receipt, which must show success.
    fn mine(&self, tx: TransactionRequest, what: &str) -> alloy::rpc::types::TransactionReceipt {
        self.rt.block_on(async {
            let receipt = self
                .deployer
                .send_transaction(tx)
                .await
                .unwrap_or_else(|e| panic!("send {what}: {e}"))
                .get_receipt()
                .await
                .unwrap_or_else(|e| panic!("{what} receipt: {e}"));
            assert!(receipt.status(), "{what} reverted");
            receipt
        })
    }

    /// Calls an RPC method (anvil's test methods included) and returns its result.
    pub fn rpc(&self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.rt.block_on(async {
            self.deployer
                .raw_request(method.to_owned().into(), params)
                .await
                .unwrap_or_else(|e| panic!("{method}: {e}"))
        })
    }

    /// Sends a transaction from the deployer and waits for it.
    pub fn send(&self, to: Address, data: Vec<u8>) -> B256 {
        let tx = TransactionRequest::default()
            .to(to)
            .input(Bytes::from(data).into());
        self.mine(tx, "transaction").transaction_hash
    }

    /// Deploys a project contract (`contracts/out/<name>.json`) without constructor
    /// arguments.
    pub fn deploy_artifact(&self, name: &str) -> Address {
        self.deploy(artifact(name))
    }

    /// An `eth_call` to `to` with `data`; the raw result.
    pub fn call(&self, to: Address, data: Vec<u8>) -> Bytes {
        let tx = TransactionRequest::default()
            .to(to)
            .input(Bytes::from(data).into());
        self.rt
            .block_on(self.deployer.call(tx).into_future())
            .expect("eth_call")
    }

    pub fn mint(&self, to: Address, value: u64) {
        self.send(
            self.usdc,
            ITestUsdc::mintCall {
                to,
                value: U256::from(value),
            }
            .abi_encode(),
        );
    }

    pub fn balance(&self, who: Address) -> U256 {
        let out = self.call(
            self.usdc,
            ITestUsdc::balanceOfCall { account: who }.abi_encode(),
        );
        ITestUsdc::balanceOfCall::abi_decode_returns(&out).expect("balance")
    }

    /// `who`'s token allowance to Permit2.
    pub fn permit2_allowance(&self, who: Address) -> U256 {
        let out = self.call(
            self.usdc,
            ITestUsdc::allowanceCall {
                owner: who,
                spender: PERMIT2,
            }
            .abi_encode(),
        );
        ITestUsdc::allowanceCall::abi_decode_returns(&out).expect("allowance")
    }

    pub fn authorization_used(&self, authorizer: Address, nonce: B256) -> bool {
        let out = self.call(
            self.usdc,
            ITestUsdc::authorizationStateCall { authorizer, nonce }.abi_encode(),
        );
        ITestUsdc::authorizationStateCall::abi_decode_returns(&out).expect("state")
    }

    /// How many transactions `who` has sent.
    /// Delegates the account of `key` to the code at `delegate` with an EIP-7702
    /// authorization the account signs, sent in a type-4 transaction by the deployer.
    pub fn delegate(&self, key: &str, delegate: Address) {
        use alloy::eips::eip7702::Authorization;
        use alloy::signers::SignerSync;
        let account = signer(key);
        let nonce = self.tx_count(account.address());
        let authorization = Authorization {
            chain_id: U256::from(84532),
            address: delegate,
            nonce,
        };
        let signature = account
            .sign_hash_sync(&authorization.signature_hash())
            .expect("sign the authorization");
        // Sent to the deployer itself: the authorization is what it carries.
        let mut tx = TransactionRequest::default().to(signer(DEPLOYER_KEY).address());
        tx.authorization_list = Some(vec![authorization.into_signed(signature)]);
        self.mine(tx, "delegation");
    }

    /// How many transactions sent by `who` were mined reverted, block by block.
    pub fn reverted_txs_from(&self, who: Address) -> usize {
        let latest = self.rpc("eth_blockNumber", serde_json::json!([]));
        let latest = u64::from_str_radix(
            latest
                .as_str()
                .expect("block number")
                .trim_start_matches("0x"),
            16,
        )
        .expect("block number hex");
        let mut reverted = 0;
        for number in 0..=latest {
            let block = self.rpc(
                "eth_getBlockByNumber",
                serde_json::json!([format!("0x{number:x}"), true]),
            );
            for tx in block["transactions"].as_array().into_iter().flatten() {
                let from: Option<Address> = tx["from"].as_str().and_then(|f| f.parse().ok());
                if from != Some(who) {
                    continue;
                }
                let receipt =
                    self.rpc("eth_getTransactionReceipt", serde_json::json!([tx["hash"]]));
                if receipt["status"] == "0x0" {
                    reverted += 1;
                }
            }
        }
        reverted
    }

    /// Deploys the artifact `name` with ABI-encoded constructor arguments `args`.
    pub fn deploy_artifact_with(&self, name: &str, args: &[u8]) -> Address {
        let mut code = artifact(name).to_vec();
        code.extend_from_slice(args);
        self.deploy(code.into())
    }

    pub fn tx_count(&self, who: Address) -> u64 {
        self.rt
            .block_on(self.deployer.get_transaction_count(who).into_future())
            .expect("nonce")
    }

    /// Whether a transaction is mined and succeeded.
    pub fn succeeded(&self, hash: B256) -> bool {
        self.rt
            .block_on(self.deployer.get_transaction_receipt(hash))
            .expect("receipt call")
            .is_some_and(|r| r.status())
    }

    /// Gas used by a mined transaction.
    pub fn gas_used(&self, hash: B256) -> u64 {
        self.rt
            .block_on(self.deployer.get_transaction_receipt(hash))
            .expect("receipt call")
            .expect("mined")
            .gas_used
    }

    /// `levy:` YAML for this chain with the RPC reached through `rpc_url` instead.
    pub fn levy_yaml_via(&self, rpc_url: &str) -> String {
        self.levy_yaml().replace(&self.rpc_url, rpc_url)
    }

    /// The payer (by key) cancels one of its authorizations on chain (submitted by the deployer).
    pub fn cancel(&self, payer_key: &str, nonce: B256) {
        let payer = signer(payer_key);
        let domain = ITestUsdc::DOMAIN_SEPARATORCall::abi_decode_returns(
            &self.call(self.usdc, ITestUsdc::DOMAIN_SEPARATORCall {}.abi_encode()),
        )
        .expect("domain");
        let typehash = keccak256("CancelAuthorization(address authorizer,bytes32 nonce)");
        let struct_hash = keccak256((typehash, payer.address(), nonce).abi_encode());
        let mut bytes = vec![0x19, 0x01];
        bytes.extend_from_slice(domain.as_slice());
        bytes.extend_from_slice(struct_hash.as_slice());
        let digest = keccak256(bytes);
        let secret = B256::from_slice(&alloy::hex::decode(payer_key).expect("key hex"));
        let sig = alloy_consensus::crypto::secp256k1::sign_message(secret, digest).expect("sign");
        let raw = sig.as_bytes();
        self.send(
            self.usdc,
            ITestUsdc::cancelAuthorizationCall {
                authorizer: payer.address(),
                nonce,
                v: raw[64],
                r: B256::from_slice(&raw[..32]),
                s: B256::from_slice(&raw[32..64]),
            }
            .abi_encode(),
        );
    }

    /// The payer (by key) moves its whole token balance away (sent by itself).
    pub fn empty(&self, payer_key: &str) {
        let balance = self.balance(signer(payer_key).address());
        let data = ITestUsdc::transferCall {
            to: Address::repeat_byte(0xee),
            value: balance,
        }
        .abi_encode();
        self.send_as(payer_key, self.usdc, data);
    }

    /// The payer (by key) lets Permit2 spend its tokens (the one-time step `upto` needs).
    pub fn approve_permit2(&self, payer_key: &str) {
        let data = ITestUsdc::approveCall {
            spender: PERMIT2,
            value: U256::MAX,
        }
        .abi_encode();
        self.send_as(payer_key, self.usdc, data);
    }

    /// Sends a transaction from `key`'s account and waits for it to succeed.
    pub fn send_as(&self, key: &str, to: Address, data: Vec<u8>) {
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer(key)))
            .connect_http(self.rpc_url.parse().expect("url"));
        let tx = TransactionRequest::default()
            .to(to)
            .input(Bytes::from(data).into());
        self.rt.block_on(async {
            let receipt = provider
                .send_transaction(tx)
                .await
                .expect("send")
                .get_receipt()
                .await
                .expect("receipt");
            assert!(receipt.status(), "transaction reverted");
        });
    }

    /// `levy:` YAML for this chain: the built-in base-sepolia network pointed at anvil and its
    /// batch-call contract (the built-in `usdc` is where TestUSDC was placed).
    pub fn levy_yaml(&self) -> String {
        format!(
            "  networks:\n    base-sepolia:\n      rpc_url: {}\n      multicall: \"{}\"\n      batcher: \"{}\"\n",
            self.rpc_url, self.multicall, self.batcher
        )
    }
}

impl Drop for TestChain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
