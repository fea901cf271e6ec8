"""Checks `infra/openapi.yaml` with real validators: the document itself with
openapi-spec-validator, then each recorded exchange with openapi-core (the request against
its operation, unless the test sent bad input on purpose; the answer against the documented
status, headers and schema). Every operation the document describes must have been
exercised. Reads the exchanges as JSON on stdin; prints every failure and exits 1."""

import json
import re
import sys
from urllib.parse import unquote

from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

# The document's `servers` entry: requests are matched against it, whatever port the test
# gateway listened on.
SERVER = "http://127.0.0.1:3001"


def template_of(paths, path):
    """The document's path template a concrete path falls under (literal segments first)."""
    matches = []
    for template in paths:
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            matches.append((template.count("{"), template))
    return min(matches)[1] if matches else None


def main():
    spec_path = sys.argv[1]
    spec, _ = read_from_filename(spec_path)
    validate(spec)
    openapi = OpenAPI.from_file_path(spec_path)
    exchanges = json.load(sys.stdin)
    failures = []
    seen = set()
    for n, x in enumerate(exchanges):
        what = f"#{n} {x['method']} {x['path']}?{x['query']} -> {x['status']}"
        path = unquote(x["path"])
        template = template_of(spec["paths"], path)
        if template is None:
            failures.append(f"{what}: no path of the document matches")
            continue
        seen.add((template, x["method"].lower()))
        args = {}
        for pair in filter(None, x["query"].split("&")):
            key, _, value = pair.partition("=")
            args[unquote(key)] = unquote(value)
        request = MockRequest(
            SERVER,
            x["method"].lower(),
            path,
            args=args,
            headers=x["request_headers"],
            data=x["request_body"].encode(),
            content_type=x["request_headers"].get("content-type", "application/json"),
        )
        if not x["bad_input"]:
            for error in openapi.iter_request_errors(request):
                failures.append(f"{what}: request: {error!r} {getattr(error, '__cause__', '')}")
        content_type = x["response_headers"].get("content-type", "")
        response = MockResponse(
            x["response_body"].encode(),
            status_code=x["status"],
            headers=x["response_headers"],
            content_type=content_type.split(";")[0].strip() or "application/json",
        )
        for error in openapi.iter_response_errors(request, response):
            cause = getattr(error, "__cause__", None)
            details = getattr(cause, "schema_errors", None) or cause or ""
            failures.append(f"{what}: answer: {error!r} {details}\n  body: {x['response_body'][:300]}")
    operations = {
        (template, method)
        for template, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "options", "head", "patch")
    }
    for template, method in sorted(operations - seen):
        failures.append(f"{method.upper()} {template}: described, never exercised by the test")
    for failure in failures:
        print(failure)
    print(f"{len(exchanges)} exchanges, {len(seen)} operations of {len(operations)}")
    sys.exit(1 if failures else 0)


main()
