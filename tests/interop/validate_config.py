"""Checks levy configs against levy's JSON Schema with the reference Python implementation
of JSON Schema (an implementation independent of the one that wrote the schema).

Usage: validate_config.py SCHEMA.json, then one config per line on stdin (as JSON); one
answer per line on stdout: `ok`, or `invalid: <path>: <message>`.
"""
import json
import sys

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

with open(sys.argv[1], encoding="utf-8") as f:
    schema = json.load(f)
Draft202012Validator.check_schema(schema)
validator = Draft202012Validator(schema)

for line in sys.stdin:
    config = json.loads(line)
    first = best_match(validator.iter_errors(config))
    if first is not None:
        path = ".".join(str(p) for p in first.absolute_path) or "(the file)"
        print(f"invalid: {path}: {first.message}", flush=True)
    else:
        print("ok", flush=True)
