"""Prepares anvil for the benchmark run: deploys TestUSDC at Base Sepolia USDC's address
(as the test harness does) and BatchCall, and mints tokens to the payer. Prints the
BatchCall address. Uses anvil's unlocked development accounts over JSON-RPC.

Usage: python3 benches/chain_setup.py RPC_URL PAYER_ADDRESS
"""

import json
import pathlib
import sys
import time
import urllib.request

RPC, PAYER = sys.argv[1], sys.argv[2]
DEPLOYER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"  # anvil account 2
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
OUT = pathlib.Path(__file__).resolve().parent.parent / "contracts" / "out"


def rpc(method, params):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(RPC, body, {"content-type": "application/json"})
    answer = json.load(urllib.request.urlopen(request))
    if "error" in answer:
        raise SystemExit(f"{method}: {answer['error']}")
    return answer["result"]


def send(data, to=None):
    tx = {"from": DEPLOYER, "data": data, "gas": hex(6_000_000)}
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


usdc = json.loads((OUT / "TestUSDC.json").read_text())["bytecode"]
batch = json.loads((OUT / "BatchCall.json").read_text())["bytecode"]
deployed = send(usdc + abi_strings("USDC", "2"))["contractAddress"]
rpc("anvil_setCode", [USDC, rpc("eth_getCode", [deployed, "latest"])])
for slot in (0, 1):
    rpc("anvil_setStorageAt", [USDC, hex(slot), rpc("eth_getStorageAt", [deployed, hex(slot), "latest"])])
multicall = send(batch)["contractAddress"]
mint = "0x40c10f19" + word(int(PAYER, 16)) + word(10**15)
send(mint, USDC)
print(multicall)
