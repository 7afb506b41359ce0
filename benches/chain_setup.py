"""Prepares anvil for the benchmark run, as the test harness does: deploys TestUSDC at Base
Sepolia USDC's address, BatchCall, Permit2 and x402's upto proxy at their canonical addresses,
and a LevyBatcher owned by each settler (levy refuses a batcher another key owns); mints
tokens to the payer and lets Permit2 spend them (for metered routes). Prints the BatchCall
address, then the settlers' LevyBatcher addresses in order. Uses anvil's unlocked
development accounts over JSON-RPC.

Usage: python3 benches/chain_setup.py RPC_URL PAYER_ADDRESS SETTLER_ADDRESS...
"""

import json
import pathlib
import sys
import time
import urllib.request

RPC, PAYER, SETTLERS = sys.argv[1], sys.argv[2], sys.argv[3:]
DEPLOYER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"  # anvil account 2
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PERMIT2 = "0x000000000022D473030F116dDEE9F6B43aC78BA3"
UPTO_PROXY = "0x4020A4f3b7b90ccA423B9fabCc0CE57C6C240002"
BATCH_SETTLEMENT = "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003"
DEPOSIT_COLLECTOR = "0x4020806089470a89826cB9fB1f4059150b550004"
OUT = pathlib.Path(__file__).resolve().parent.parent / "contracts" / "out"


def rpc(method, params):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(RPC, body, {"content-type": "application/json"})
    answer = json.load(urllib.request.urlopen(request))
    if "error" in answer:
        raise SystemExit(f"{method}: {answer['error']}")
    return answer["result"]


def send(data, to=None, sender=DEPLOYER):
    tx = {"from": sender, "data": data, "gas": hex(6_000_000)}
    if to:
        tx["to"] = to
    hash_ = rpc("eth_sendTransaction", [tx])
    for _ in range(100):
        receipt = rpc("eth_getTransactionReceipt", [hash_])
        if receipt:
            assert receipt["status"] == "0x1", receipt
            return receipt
        time.sleep(0.05)
    raise SystemExit("no receipt")


def word(n):
    return n.to_bytes(32, "big").hex()


def abi_strings(*values):
    head, tail = "", ""
    offset = 32 * len(values)
    for v in values:
        data = v.encode()
        padded = data.hex().ljust(((len(data) + 31) // 32) * 64, "0")
        head += word(offset)
        tail += word(len(data)) + padded
        offset += 32 + len(padded) // 2
    return head + tail


def bytecode(name):
    return json.loads((OUT / f"{name}.json").read_text())["bytecode"]


def place_at(deployed, target, slots):
    """Copies a deployed contract's code and its first `slots` storage slots to `target`."""
    rpc("anvil_setCode", [target, rpc("eth_getCode", [deployed, "latest"])])
    for slot in range(slots):
        value = rpc("eth_getStorageAt", [deployed, hex(slot), "latest"])
        rpc("anvil_setStorageAt", [target, hex(slot), value])


place_at(send(bytecode("TestUSDC") + abi_strings("USDC", "2"))["contractAddress"], USDC, 2)
multicall = send(bytecode("BatchCall"))["contractAddress"]
place_at(send(bytecode("Permit2"))["contractAddress"], PERMIT2, 0)
place_at(send(bytecode("UptoPermit2Proxy"))["contractAddress"], UPTO_PROXY, 0)
place_at(send(bytecode("BatchSettlement"))["contractAddress"], BATCH_SETTLEMENT, 0)
place_at(send(bytecode("ERC3009DepositCollector"))["contractAddress"], DEPOSIT_COLLECTOR, 0)
batchers = [
    send(bytecode("LevyBatcher") + word(int(settler, 16)) + word(int(UPTO_PROXY, 16)))["contractAddress"]
    for settler in SETTLERS
]
mint = "0x40c10f19" + word(int(PAYER, 16)) + word(10**15)
send(mint, USDC)
approve = "0x095ea7b3" + word(int(PERMIT2, 16)) + word(2**256 - 1)
send(approve, USDC, sender=PAYER)
print(multicall, *batchers)
