// Compiles contracts/src/*.sol with the pinned solcjs and writes each contract's ABI and
// bytecode to contracts/out/<Name>.json. Run: npm --prefix contracts run build
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const srcDir = path.join(__dirname, "src");
const outDir = path.join(__dirname, "out");
const sources = {};
for (const file of fs.readdirSync(srcDir).filter((f) => f.endsWith(".sol")).sort()) {
  sources[file] = { content: fs.readFileSync(path.join(srcDir, file), "utf8") };
}
const input = {
  language: "Solidity",
  sources,
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length > 0) process.exit(1);
fs.mkdirSync(outDir, { recursive: true });
for (const [file, contracts] of Object.entries(output.contracts)) {
  for (const [name, artifact] of Object.entries(contracts)) {
    if (!artifact.evm.bytecode.object) continue; // an interface: nothing to deploy
    const out = { contractName: name, source: `src/${file}`, compiler: `solc ${solc.version()}`, abi: artifact.abi, bytecode: "0x" + artifact.evm.bytecode.object };
    fs.writeFileSync(path.join(outDir, `${name}.json`), JSON.stringify(out, null, 2) + "\n");
    console.log(`wrote out/${name}.json`);
  }
}
