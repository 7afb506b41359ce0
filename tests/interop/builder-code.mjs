// Reads the ERC-8021 attribution at the end of a transaction's calldata with the official
// helper of @x402/extensions.
// Usage: node builder-code.mjs CALLDATA_HEX. Prints one JSON line: {codes} (null when none).
import { parseBuilderCodeSuffixFromCalldata } from "@x402/extensions/builder-code";

const codes = parseBuilderCodeSuffixFromCalldata(process.argv[2]);
process.stdout.write(JSON.stringify({ codes: codes ?? null }) + "\n");
