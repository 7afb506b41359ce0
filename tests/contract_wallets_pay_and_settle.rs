//! Contract-wallet payers, as the x402 exact scheme allows: an EIP-1271 wallet that is
//! deployed, and an ERC-6492 counterfactual one that exists only as an address until levy's
//! settlement deploys it. levy checks their signatures on chain before serving (EOAs stay on
//! the inline path), and settles them with the transfer overload each needs.

use std::time::Duration;

use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::sol;
use alloy::sol_types::{SolCall, SolValue};
use levy::client::{random_nonce, Terms};
use serde_json::{json, Value};

use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::pay::{challenge, decode, now, paid_get};
use crate::support::settle::{settling_levy, wait_all_final, PRICE};
use crate::support::{request, Levy, Origin, Response, PAY_TO};

sol! {
    interface ITestWalletFactory {
        function deploy(address owner, bytes32 salt) external returns (address);
        function walletAddress(address owner, bytes32 salt) external view returns (address);
    }
}

const ERC6492_SUFFIX: [u8; 32] = [
    0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92,
    0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92,
];

/// A `PAYMENT-SIGNATURE` for `levy`'s `/data/x` from `wallet`, signed by `owner_key` over the
/// EIP-712 digest; `wrap` turns the 65-byte owner signature into the wallet's signature.
fn wallet_payment(
    levy: &Levy,
    wallet: Address,
    owner_key: &str,
    wrap: impl Fn(Vec<u8>) -> Vec<u8>,
) -> (B256, String) {
    wallet_payment_for(levy, "/data/x", wallet, owner_key, wrap)
}

/// [`wallet_payment`] for the route at `path`.
pub(crate) fn wallet_payment_for(
    levy: &Levy,
    path: &str,
    wallet: Address,
    owner_key: &str,
    wrap: impl Fn(Vec<u8>) -> Vec<u8>,
) -> (B256, String) {
    let accepted = challenge(levy, path)["accepts"][0].clone();
    let terms = Terms::from_v2(&accepted).expect("terms");
    let (valid_after, valid_before, nonce) = (now() - 600, now() + 300, random_nonce());
    let domain = terms.domain_separator();
    let digest = levy::verify::transfer_digest(
        &domain,
        wallet,
        terms.pay_to,
        terms.amount,
        valid_after,
        valid_before,
        nonce,
    );
    let secret = B256::from_slice(&alloy::hex::decode(owner_key).expect("key hex"));
    let owner_signature = alloy_consensus::crypto::secp256k1::sign_message(secret, digest)
        .expect("sign")
        .as_bytes()
        .to_vec();
    let payload = json!({
        "x402Version": 2,
        "accepted": accepted,
        "payload": {
            "signature": format!("0x{}", alloy::hex::encode(wrap(owner_signature))),
            "authorization": {
                "from": wallet.to_checksum(None),
                "to": terms.pay_to.to_checksum(None),
                "value": terms.amount.to_string(),
                "validAfter": valid_after.to_string(),
                "validBefore": valid_before.to_string(),
                "nonce": nonce.to_string(),
            }
        }
    });
    (
        nonce,
        levy::x402::encode_header(payload.to_string().as_bytes()),
    )
}

fn pay(levy: &Levy, header: &str) -> Response {
    request(levy.addr, &paid_get("/data/x", "PAYMENT-SIGNATURE", header))
}

fn status(response: &Response) -> Value {
    assert_eq!(response.status, 200, "{}", response.text());
    decode(
        response
            .header("payment-response")
            .expect("PAYMENT-RESPONSE"),
    )["extensions"]["levy"]
        .clone()
}

/// An EIP-1271 test wallet owned by `owner_key`, deployed on `chain`.
pub(crate) fn deployed_wallet(chain: &TestChain, owner_key: &str) -> Address {
    let factory = chain.deploy_artifact("TestWalletFactory");
    let owner = signer(owner_key).address();
    let salt = B256::repeat_byte(1);
    chain.send(
        factory,
        ITestWalletFactory::deployCall { owner, salt }.abi_encode(),
    );
    wallet_of(chain, factory, owner, salt)
}

pub(crate) fn wallet_of(
    chain: &TestChain,
    factory: Address,
    owner: Address,
    salt: B256,
) -> Address {
    let answer = chain.call(
        factory,
        ITestWalletFactory::walletAddressCall { owner, salt }.abi_encode(),
    );
    ITestWalletFactory::walletAddressCall::abi_decode_returns(&answer).expect("address")
}

#[test]
fn a_deployed_eip1271_wallet_pays_and_settles_and_a_wrong_key_is_refused() {
    let chain = TestChain::start();
    let wallet = deployed_wallet(&chain, KEYS[2]);
    chain.mint(wallet, 10 * PRICE);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = settling_levy(&chain, &origin, dir.path(), "    max_delay_ms: 200\n", "");

    // Signed by a key that does not own the wallet: the wallet says no.
    let (_, forged) = wallet_payment(&levy, wallet, KEYS[3], |s| s);
    let refused = pay(&levy, &forged);
    assert_eq!(refused.status, 402);
    assert_eq!(
        decode(refused.header("payment-required").expect("challenge"))["error"],
        "invalid_exact_evm_signature"
    );
    assert!(origin.seen().is_empty());

    let (nonce, header) = wallet_payment(&levy, wallet, KEYS[2], |s| s);
    let paid = pay(&levy, &header);
    assert_eq!(status(&paid)["status"], "pending");
    wait_all_final(levy.admin, Duration::from_secs(30));
    assert!(chain.authorization_used(wallet, nonce));
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(PRICE)
    );
    assert_eq!(chain.balance(wallet), U256::from(9 * PRICE));
}

#[test]
fn an_erc6492_counterfactual_wallet_pays_and_levy_deploys_it_when_settling() {
    let chain = TestChain::start();
    let factory = chain.deploy_artifact("TestWalletFactory");
    let owner = signer(KEYS[2]).address();
    let salt = B256::repeat_byte(2);
    let wallet = wallet_of(&chain, factory, owner, salt);
    chain.mint(wallet, 10 * PRICE);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = settling_levy(&chain, &origin, dir.path(), "    max_delay_ms: 200\n", "");

    let deploy: Bytes = ITestWalletFactory::deployCall { owner, salt }
        .abi_encode()
        .into();
    let wrap = |inner: Vec<u8>| {
        let mut wrapped = (factory, deploy.clone(), Bytes::from(inner)).abi_encode_params();
        wrapped.extend_from_slice(&ERC6492_SUFFIX);
        wrapped
    };
    let (nonce, header) = wallet_payment(&levy, wallet, KEYS[2], wrap);
    let paid = pay(&levy, &header);
    assert_eq!(status(&paid)["status"], "pending");
    wait_all_final(levy.admin, Duration::from_secs(30));
    assert!(chain.authorization_used(wallet, nonce));
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(PRICE)
    );

    // A second payment from the now deployed wallet, with the same wrapper, settles too
    // (the factory call is allowed to fail once the wallet exists).
    let (nonce, header) = wallet_payment(&levy, wallet, KEYS[2], wrap);
    assert_eq!(status(&pay(&levy, &header))["status"], "pending");
    wait_all_final(levy.admin, Duration::from_secs(30));
    assert!(chain.authorization_used(wallet, nonce));
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(2 * PRICE)
    );
}
