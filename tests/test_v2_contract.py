"""/api/v2 keeps to the Comfy API v2 contract as published: schemathesis reads the vendored copy of the contract
(tests/contracts/comfy-api-v2.yaml, comfy-sdk 0.5.0's spec/openapi.yaml, unedited), sends what it describes, and what
it forbids, to a real server in front of a real ComfyUI, and checks every answer against the contract: no server
error, and status code, content type, headers and body as documented; forbidden data refused.

Generated ids in paths are random strings, which only ever find nothing (a 404); so each operation that takes an id
(or a hash) is also sent the ids of jobs and assets made before the run (a succeeded job, a canceled one, an upload,
a job's output). The documented 200 bodies, the content route's ranges, the event streams of finished jobs, and a
delete's 204 and 409 are checked that way too. Likewise some valid job submissions carry a workflow that runs, and
some valid from-hash bodies a hash the server has: a random graph never runs, and a random hash is never stored.

The server requires a bearer key (API_KEYS). Most requests carry it; some carry a wrong one or none, so the 401 of
every operation is checked against the contract as well.

Whether valid data is accepted (schemathesis's `positive_data_acceptance`) is not checked: a workflow the contract
allows (any object) is refused when it is not a graph ComfyUI can run, as the contract says (422
`invalid_workflow`). Where the server and the contract part on purpose, the one check at odds is left out for that
one operation's answers and replaced by a narrower one (`left_out` says which and why).

Each operation gets a fixed number of generated requests, drawn deterministically (the same requests on every run),
sized for a 2-core CI machine: most fuzzed job submissions are refused by the server's own checks or by ComfyUI's
validation before anything runs, and the few that run make 8x8 images. Schemathesis's pytest loader for a schema
whose server a fixture starts does not run on this pytest, so the test drives the operations' Hypothesis strategies
itself, as tests/test_openapi_contract.py does. Schemathesis reads an event stream until it ends, 20 events, or the
request timeout, so the event stream operation is among the generated ones: it cannot hang the run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import hypothesis
import hypothesis.strategies as st
import jsonschema_rs
import pytest
import schemathesis
import yaml
from schemathesis import GenerationMode
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.graphs import png_bytes, slow, solid
from tests.support.server import ApiServer, wait_until

CONTRACT = Path(__file__).parent / "contracts" / "comfy-api-v2.yaml"
CONTRACT_SHA256 = "970d7a0b5b6a9c0c36422811e7b189fab5f610c68a01f8ef5939fa007aa5d5ef"
CONTRACT_DOCUMENT: dict[str, Any] = yaml.safe_load(CONTRACT.read_text())
KEY = "v2-contract-key"
WRONG_KEY = "not-the-key"

POSITIVE = GenerationMode.POSITIVE
NEGATIVE = GenerationMode.NEGATIVE

UPLOAD = "POST /api/v2/assets"
FROM_HASH = "POST /api/v2/assets/from-hash"
CONTENT = "GET /api/v2/assets/{id}/content"
SUBMIT = "POST /api/v2/jobs"
EVENTS = "GET /api/v2/jobs/{id}/events"

# Every operation of the contract, with the number of requests generated for it in each mode. Only bodies can be
# negative: the path ids, the hash and the headers (Idempotency-Key, Range) are plain strings, which nothing sent in
# a path or a header contradicts.
OPERATIONS: dict[str, dict[GenerationMode, int]] = {
    UPLOAD: {POSITIVE: 100, NEGATIVE: 100},
    FROM_HASH: {POSITIVE: 60, NEGATIVE: 60},
    "HEAD /api/v2/assets/by-hash/{hash}": {POSITIVE: 30},
    "GET /api/v2/assets/{id}": {POSITIVE: 30},
    "DELETE /api/v2/assets/{id}": {POSITIVE: 30},
    CONTENT: {POSITIVE: 60},
    SUBMIT: {POSITIVE: 120, NEGATIVE: 120},
    "GET /api/v2/jobs/{id}": {POSITIVE: 30},
    "GET /api/v2/jobs/{id}/workflow": {POSITIVE: 30},
    EVENTS: {POSITIVE: 30},
    "POST /api/v2/jobs/{id}/cancel": {POSITIVE: 30},
}

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Forbidden data is refused: a 4xx for every request with data the contract forbids.
NEGATIVE_CHECKS: list[CheckFunction] = [*CHECKS, negative_data_rejection]

# The bearer header a generated request is sent with: mostly the key, sometimes a wrong one or none (401).
AUTHORIZATIONS = [f"Bearer {KEY}"] * 4 + [f"Bearer {WRONG_KEY}", None]
# Range headers for the content route besides the generated strings (which it ignores): the first bytes, a tail, an
# open end, and a start past the end (416).
RANGES = ["bytes=0-7", "bytes=-4", "bytes=5-", "bytes=100000000-"]
TERMINAL = {"succeeded", "canceled", "failed", "expired"}


def left_out(label: str, mode: GenerationMode, status: int) -> CheckFunction | None:
    """The one check left out for an answer where the server parts from the contract on purpose; `check_answer`
    checks what the server does instead."""
    if label == FROM_HASH and status == 422:
        # The contract gives from-hash no status for a body it cannot take (only 404 `blob_not_found`, which would
        # misreport a body without a hash). The server answers 422 `invalid_request`, the contract's status for a
        # validation failure on the upload route beside it and on job submissions.
        return status_code_conformance
    if label == CONTENT and status in (200, 206):
        # The contract documents the bytes as application/octet-stream. The server sends the asset's own content
        # type, as the self-hosted reference implementation (comfy-api-proxy) does, so that the asset's `url` works
        # in a browser or an <img>.
        return content_type_conformance
    if label == EVENTS and status == 200:
        # The contract's schema for the stream is `type: string`, "a stream of event:/data: frames" (the whole stream
        # as text), while schemathesis reads an Open API 3.0 stream schema as the schema of each event, which no
        # event can meet. The events are checked against the contract's `x-sse-events` catalog instead.
        return response_schema_conformance
    if label == UPLOAD and mode is NEGATIVE:
        # A multipart form carries every value as text, and an array as the field repeated: schemathesis's number
        # for `content_type` arrives as the text of the number, a valid content type string, and a repeated
        # `file_path` is read as its first value, as form parsers read a single-valued field. Forbidden values that
        # survive the encoding (no file, a missing field, `expires_in` out of range) are refused with 422 all the
        # same: the status, content type and body checks hold those answers to the contract.
        return negative_data_rejection
    return None


@pytest.fixture(scope="module")
def contract_server(make_server: Callable[..., ApiServer]) -> ApiServer:
    return make_server("v2-contract", API_KEYS=KEY).start()


@pytest.fixture(scope="module")
def client(contract_server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=contract_server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=httpx.Timeout(120.0)
    ) as http:
        yield http


@pytest.fixture(scope="module")
def contract_schema(contract_server: ApiServer) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_path(CONTRACT)
    # The contract's own `servers` are the public deployments: every request goes to this server instead.
    schema.config.update(base_url=contract_server.url)
    return schema


@pytest.fixture(scope="module")
def known(contract_server: ApiServer, client: httpx.Client) -> dict[str, Any]:
    """What the server has, by the path parameter it goes in: `job` (a succeeded and a canceled job), `asset`
    (an upload and a job's output, kept for the whole run), `deletable` (an upload, and a job's output, which
    DELETE refuses with 409) and `hash`; and `content_types`, each asset's content type."""
    kept = upload(client, png_bytes(16, 16), "kept.png")
    deletable = upload(client, png_bytes(24, 24, (0, 90, 200)), "deletable.png")
    succeeded = finished(client, submit(client, solid(8, 8))["id"], "succeeded")
    (output,) = succeeded["outputs"]
    canceled = submit(client, slow())
    contract_server.wait_comfy_running()
    assert client.post(f"/api/v2/jobs/{canceled['id']}/cancel").status_code == 200
    finished(client, canceled["id"], "canceled")
    return {
        "job": [succeeded["id"], canceled["id"]],
        "asset": [kept["id"], output["id"]],
        "deletable": [deletable["id"], output["id"]],
        "hash": [kept["hash"]],
        "content_types": {item["id"]: item["content_type"] for item in (kept, deletable, output)},
    }


def test_the_contract_is_the_vendored_one_and_every_operation_is_tested(
    contract_schema: schemathesis.BaseSchema,
) -> None:
    # Byte for byte comfy-sdk 0.5.0's spec/openapi.yaml (tests/contracts/README.md).
    assert hashlib.sha256(CONTRACT.read_bytes()).hexdigest() == CONTRACT_SHA256
    labels = {result.ok().label for result in contract_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


def test_every_example_of_the_contract_is_answered_as_documented(
    contract_schema: schemathesis.BaseSchema, known: dict[str, Any]
) -> None:
    cases = [
        strategy
        for result in contract_schema.get_all_operations()
        for strategy in result.ok().get_strategies_from_examples()
    ]
    assert cases, "the contract has no examples"
    variation = st.just(Variation(authorization=f"Bearer {KEY}"))
    run_cases(st.tuples(st.one_of(cases), variation), len(cases), known, POSITIVE)


@pytest.mark.parametrize(
    ("label", "mode", "examples"),
    [(label, mode, examples) for label, modes in OPERATIONS.items() for mode, examples in modes.items()],
)
def test_the_server_keeps_to_the_v2_contract(
    contract_schema: schemathesis.BaseSchema,
    known: dict[str, Any],
    label: str,
    mode: GenerationMode,
    examples: int,
) -> None:
    operation = contract_schema.find_operation_by_label(label)
    assert operation is not None, label
    cases = st.tuples(operation.as_strategy(generation_mode=mode), variations(label, mode, known))
    run_cases(cases, examples, known, mode)


class Variation(NamedTuple):
    """What a generated case is sent with besides what schemathesis made: the bearer header (None: no header), and
    where not None, a path parameter, a body field and a Range header that replace the generated ones."""

    authorization: str | None
    path_value: str | None = None
    body_field: tuple[str, Any] | None = None
    byte_range: str | None = None


def variations(label: str, mode: GenerationMode, known: dict[str, Any]) -> st.SearchStrategy[Variation]:
    """The variations of `label`'s cases: the path parameter is the generated one (an unknown id) or the id of
    something the server has; the content route's Range one of RANGES; a valid job submission's workflow one that
    runs, and a valid from-hash body's hash one the server has."""
    if "{hash}" in label:
        ids = known["hash"]
    elif label.startswith("DELETE"):
        ids = known["deletable"]
    elif "/jobs/{id}" in label:
        ids = known["job"]
    elif "/assets/{id}" in label:
        ids = known["asset"]
    else:
        ids = []
    # Only a valid body is an object whose field can be replaced, and stays valid.
    fields: list[tuple[str, Any]] = []
    if mode is POSITIVE and label == SUBMIT:
        fields = [("workflow", solid(8, 8))]
    elif mode is POSITIVE and label == FROM_HASH:
        fields = [("hash", known["hash"][0])]
    return st.builds(
        Variation,
        authorization=st.sampled_from(AUTHORIZATIONS),
        path_value=st.sampled_from([None, *ids]),
        # Mostly the generated bodies: each workflow that runs takes ComfyUI a moment.
        body_field=st.sampled_from([None] * 4 + fields) if fields else st.none(),
        byte_range=st.sampled_from([None, *RANGES]) if label == CONTENT else st.none(),
    )


def run_cases(
    cases: st.SearchStrategy[tuple[schemathesis.Case, Variation]],
    examples: int,
    known: dict[str, Any],
    mode: GenerationMode,
) -> None:
    """Send `examples` cases drawn from `cases`, the same ones on every run, and check each answer."""

    @hypothesis.settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(drawn=cases)
    def keeps_to_the_contract(drawn: tuple[schemathesis.Case, Variation]) -> None:
        case, variation = drawn
        apply(case, variation)
        # Generous: the bound only keeps a hung server from hanging the test.
        response = case.call(timeout=60)
        check_answer(case, response, mode, known["content_types"])

    keeps_to_the_contract()


def apply(case: schemathesis.Case, variation: Variation) -> None:
    if variation.path_value is not None:
        (name,) = case.path_parameters
        case.path_parameters[name] = variation.path_value
    headers = {name: value for name, value in (case.headers or {}).items() if name.lower() != "authorization"}
    if variation.authorization is not None:
        headers["Authorization"] = variation.authorization
    if variation.byte_range is not None:
        headers["Range"] = variation.byte_range
    case.headers = headers
    if variation.body_field is not None:
        name, value = variation.body_field
        case.body = {**case.body, name: value}
    if case.operation.label == SUBMIT:
        case.body = keep_local(case.body)


def check_answer(case: schemathesis.Case, response: Any, mode: GenerationMode, content_types: dict[str, str]) -> None:
    """Every check on the answer, but the one `left_out` leaves out for it, and what the server does instead."""
    label = case.operation.label
    status = response.status_code
    excluded = left_out(label, mode, status)
    checks = NEGATIVE_CHECKS if mode is NEGATIVE else CHECKS
    case.validate_response(response, checks=[check for check in checks if check is not excluded])
    if excluded is None or excluded is negative_data_rejection:
        pass
    elif label == FROM_HASH:
        assert error_code(response) == "invalid_request", response.text
    elif label == CONTENT:
        assert media_type(response) == content_types[case.path_parameters["id"]], response.headers
    elif label == EVENTS:
        check_events(response.text)
    responses = CONTRACT_DOCUMENT["paths"][case.operation.path][case.method.lower()]["responses"]
    documented = responses.get(str(status))
    bodiless = documented is not None and "$ref" not in documented and "content" not in documented
    if status >= 400 and case.method.upper() != "HEAD" and not bodiless:
        # Every error the contract gives a body, or has no status for, is an ErrorEnvelope.
        assert error_code(response), response.text


def error_code(response: Any) -> str:
    """The `error.code` of an ErrorEnvelope body (and that the body is one)."""
    assert media_type(response) == "application/json", response.headers
    body = json.loads(response.content)
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    error = body["error"]
    assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str), body
    assert error.get("details") is None or isinstance(error["details"], dict), body
    return error["code"]


def media_type(response: Any) -> str:
    """The media type of an httpx or a schemathesis response (whose headers are lists of values)."""
    value = response.headers.get("content-type") or ""
    return (value[0] if isinstance(value, list) else value).split(";")[0].strip()


def keep_local(value: Any) -> Any:
    """`value` with every string that could be a URL pointed at a closed loopback port, which the server's URL
    guard refuses without a lookup: a fuzzed workflow's inputs reach nothing beyond this machine."""
    if isinstance(value, dict):
        return {key: keep_local(item) for key, item in value.items()}
    if isinstance(value, list):
        return [keep_local(item) for item in value]
    if isinstance(value, str) and "://" in value:
        return "http://127.0.0.1:9/"
    return value


# Event streams -------------------------------------------------------------------------------------------------------
def _json_schema(node: Any) -> Any:
    """An Open API 3.0 schema as JSON Schema: `nullable: true` becomes "or null"."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {
        key: {name: _json_schema(item) for name, item in value.items()} if key == "properties" else _json_schema(value)
        for key, value in node.items()
        if key not in ("nullable", "example")
    }
    return {"anyOf": [converted, {"type": "null"}]} if node.get("nullable") else converted


def _event_validators() -> dict[str, jsonschema_rs.Draft4Validator]:
    """A validator for each event of the contract's `x-sse-events` catalog, by event name, formats (date-time, uri)
    included; with jsonschema-rs, which schemathesis validates answers with."""
    catalog = CONTRACT_DOCUMENT["paths"]["/api/v2/jobs/{id}/events"]["get"]["x-sse-events"]
    components = _json_schema(CONTRACT_DOCUMENT["components"])
    return {
        name: jsonschema_rs.Draft4Validator(
            {"allOf": [{"$ref": entry["schema"]}], "components": components}, validate_formats=True
        )
        for name, entry in catalog.items()
    }


EVENT_VALIDATORS = _event_validators()


def parse_events(text: str) -> list[tuple[str, str]]:
    """(event name, data) of each event of a text/event-stream body; comments (keep-alives) left out."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        if data:
            events.append((name, "\n".join(data)))
    return events


def check_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Every event of the stream is in the contract's catalog, with data its schema allows; the events."""
    events = []
    for name, data in parse_events(text):
        assert name in EVENT_VALIDATORS, f"event {name!r} is not in the contract's catalog"
        payload = json.loads(data)
        EVENT_VALIDATORS[name].validate(payload)
        events.append((name, payload))
    return events


# Deterministic checks beside the generated ones ----------------------------------------------------------------------
def test_a_finished_jobs_event_stream_keeps_to_the_catalog_and_ends(
    client: httpx.Client, known: dict[str, Any]
) -> None:
    for job_id in known["job"]:
        job = client.get(f"/api/v2/jobs/{job_id}").json()
        response = client.get(f"/api/v2/jobs/{job_id}/events")
        assert response.status_code == 200
        assert media_type(response) == "text/event-stream"
        events = check_events(response.text)
        statuses = [payload["status"] for name, payload in events if name == "status"]
        # A finished job's stream is its snapshot, ending with its terminal status (and then the stream ends: the
        # read above returned).
        assert job["status"] in TERMINAL and statuses and statuses[-1] == job["status"], events


def test_an_unknown_jobs_event_stream_is_a_404_envelope(client: httpx.Client) -> None:
    response = client.get("/api/v2/jobs/no-such-job/events")
    assert response.status_code == 404
    assert error_code(response) == "not_found"


@pytest.mark.parametrize("authorization", [f"Bearer {WRONG_KEY}", None])
def test_a_wrong_or_missing_key_is_a_401_envelope(contract_server: ApiServer, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.post(f"{contract_server.url}/api/v2/jobs", json={"workflow": solid(8, 8)}, headers=headers)
    assert response.status_code == 401
    assert error_code(response) == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ["/api/v2/jobs", "/api/v2/assets/from-hash"])
@pytest.mark.parametrize("body", [b"\xff{}", b"[" * 100_000], ids=["not-utf8", "nested-too-deeply"])
def test_a_body_that_cannot_be_read_is_a_422_envelope(client: httpx.Client, path: str, body: bytes) -> None:
    # The contract has no 400 (FastAPI's status for these): a body the server cannot take is a 422 invalid_request.
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert error_code(response) == "invalid_request"


def test_the_server_still_runs_jobs_after_the_fuzzing(client: httpx.Client, contract_server: ApiServer) -> None:
    # Last in the module, so it runs after the generated requests (pytest runs a module's tests in order).
    job = submit(client, solid(8, 8))
    assert finished(client, job["id"], "succeeded")["outputs"]
    assert contract_server.healthy()


# Helpers -------------------------------------------------------------------------------------------------------------
def upload(client: httpx.Client, data: bytes, file_path: str) -> dict[str, Any]:
    response = client.post(
        "/api/v2/assets",
        files={"file": (file_path, data, "image/png")},
        data={"content_type": "image/png", "file_path": file_path},
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


def submit(client: httpx.Client, workflow: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/v2/jobs", json={"workflow": workflow})
    assert response.status_code == 201, response.text
    return response.json()


def finished(client: httpx.Client, job_id: str, status: str) -> dict[str, Any]:
    """The job once it has `status`; fails at once if it ends with another."""

    def done() -> dict[str, Any] | None:
        job = client.get(f"/api/v2/jobs/{job_id}").json()
        assert job["status"] not in TERMINAL - {status}, job
        return job if job["status"] == status else None

    return wait_until(done, 120, f"job {job_id} to be {status}")
