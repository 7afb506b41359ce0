//! Networks and assets levy knows without being told: USDC on the EVM networks that the x402
//! clients support. An operator can override any field, or add their own.

/// A network levy knows by name.
pub struct BuiltinNetwork {
    pub name: &'static str,
    pub chain_id: u64,
    pub v1_name: Option<&'static str>,
    pub rpc_url: &'static str,
}

/// A token levy knows by (network, name).
pub struct BuiltinAsset {
    pub network: &'static str,
    pub name: &'static str,
    pub address: &'static str,
    pub eip712_name: &'static str,
    pub eip712_version: &'static str,
    pub decimals: u8,
    pub usd: bool,
}

/// EVM networks with a USDC deployment that x402 clients pay on.
pub const NETWORKS: &[BuiltinNetwork] = &[
    BuiltinNetwork {
        name: "base",
        chain_id: 8453,
        v1_name: Some("base"),
        rpc_url: "https://mainnet.base.org",
    },
    BuiltinNetwork {
        name: "base-sepolia",
        chain_id: 84532,
        v1_name: Some("base-sepolia"),
        rpc_url: "https://sepolia.base.org",
    },
    BuiltinNetwork {
        name: "avalanche",
        chain_id: 43114,
        v1_name: Some("avalanche"),
        rpc_url: "https://api.avax.network/ext/bc/C/rpc",
    },
    BuiltinNetwork {
        name: "avalanche-fuji",
        chain_id: 43113,
        v1_name: Some("avalanche-fuji"),
        rpc_url: "https://api.avax-test.network/ext/bc/C/rpc",
    },
    BuiltinNetwork {
        name: "polygon",
        chain_id: 137,
        v1_name: Some("polygon"),
        rpc_url: "https://polygon-rpc.com",
    },
    BuiltinNetwork {
        name: "arbitrum",
        chain_id: 42161,
        v1_name: None,
        rpc_url: "https://arb1.arbitrum.io/rpc",
    },
];

/// Circle's USDC on the networks above, with the EIP-712 domain each contract signs under.
pub const ASSETS: &[BuiltinAsset] = &[
    usdc(
        "base",
        "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
        "USD Coin",
    ),
    usdc(
        "base-sepolia",
        "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "USDC",
    ),
    usdc(
        "avalanche",
        "0xB97EF9Ef8734C71904D8002F8b6Bc66Dd9c48a6E",
        "USD Coin",
    ),
    usdc(
        "avalanche-fuji",
        "0x5425890298aed601595a70AB815c96711a31Bc65",
        "USD Coin",
    ),
    usdc(
        "polygon",
        "0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359",
        "USD Coin",
    ),
    usdc(
        "arbitrum",
        "0xaf88d065e77c8cC2239327C5EDb3A432268e5831",
        "USD Coin",
    ),
];

const fn usdc(
    network: &'static str,
    address: &'static str,
    eip712_name: &'static str,
) -> BuiltinAsset {
    BuiltinAsset {
        network,
        name: "usdc",
        address,
        eip712_name,
        eip712_version: "2",
        decimals: 6,
        usd: true,
    }
}

pub fn network(name: &str) -> Option<&'static BuiltinNetwork> {
    NETWORKS.iter().find(|n| n.name == name)
}
