"""Checks an OpenAPI document with openapi-spec-validator (an implementation independent of
levy's), as API tools would read it.

Usage: validate_openapi.py URL. Prints one JSON line: {"valid": true} or
{"valid": false, "error": "..."}.
"""
import json
import sys
import urllib.request

from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

with urllib.request.urlopen(sys.argv[1]) as response:
    document = json.load(response)
try:
    if document.get("openapi", "").split(".")[:2] != ["3", "1"]:
        raise OpenAPIValidationError(f"not an OpenAPI 3.1 document: {document.get('openapi')!r}")
    validate(document)
    print(json.dumps({"valid": True, "document": document}))
except OpenAPIValidationError as error:
    print(json.dumps({"valid": False, "error": str(error), "document": document}))
