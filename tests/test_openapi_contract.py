"""The OpenAPI document tells the truth: schemathesis sends what the document describes, and what it forbids, to a
real server in front of a real ComfyUI, and checks every answer against the document: no server error, and status
code, content type and body as documented.

Whether forbidden data is refused is not checked: pydantic takes `true` for an integer and `"1"` for a boolean
(lax mode), and schemathesis takes a value one variant of a `oneOf` forbids for invalid even where another
variant allows it.

Each operation gets a fixed number of generated requests, drawn deterministically (the same requests on every run).
Schemathesis's own pytest loader for a schema that a fixture serves does not run on this pytest, so the test drives
the operations' Hypothesis strategies itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from comfyui_api.errors import InvalidUrl
from comfyui_api.urls import split_url
from tests.support.server import ApiServer, closed_port

# A workflow that runs in a fraction of a second on a CPU, so that the valid requests to its endpoint can run.
SOLID = """
from pydantic import BaseModel, Field


class RequestSchema(BaseModel):
    size: int = Field(8, ge=8, le=32, description="Square size in pixels")
    color: int = Field(0, ge=0, le=0xFFFFFF, description="RGB colour")


def generate_workflow(input: RequestSchema) -> dict:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": input.size, "height": input.size, "batch_size": 1, "color": input.color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "solid"}},
    }
"""

# Every operation of the document, with the number of requests generated for it in each mode. Operations without
# input need one; the random graphs sent to /prompt are refused before they run (no saving node, or ComfyUI's own
# validation), so its requests are cheap, while valid requests to the workflow endpoint run a (small) prompt each.
OPERATIONS: dict[str, dict[GenerationMode, int]] = {
    "GET /health": {GenerationMode.POSITIVE: 1},
    "GET /ready": {GenerationMode.POSITIVE: 1},
    "GET /metrics": {GenerationMode.POSITIVE: 1},
    "GET /models": {GenerationMode.POSITIVE: 1},
    "POST /prompt": {GenerationMode.POSITIVE: 100, GenerationMode.NEGATIVE: 100},
    "GET /prompt/{id}": {GenerationMode.POSITIVE: 20},
    "GET /prompt/{id}/events": {GenerationMode.POSITIVE: 10},
    "GET /ui/jobs": {GenerationMode.POSITIVE: 10, GenerationMode.NEGATIVE: 10},
    "POST /interrupt": {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 30},
    "POST /download": {GenerationMode.POSITIVE: 60, GenerationMode.NEGATIVE: 60},
    "POST /workflow/contract/solid": {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 60},
}

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            # The storage endpoints here are closed ports (below), so a valid upload block fails as documented: a 502
            # is the storage provider's failure there, not the server's. A generated `timeout_s` of a few microseconds
            # is a request's own deadline passing, answered 504 as documented.
            "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", 502, 504]},
        }
    }
)

# Fields whose URLs the server resolves and connects to.
URL_FIELDS = {"url", "webhook", "webhook_v2", "url_prefix", "endpoint"}


@pytest.fixture(scope="module")
def contract_server(make_server: Callable[..., ApiServer], tmp_path_factory: pytest.TempPathFactory) -> ApiServer:
    workflows = tmp_path_factory.mktemp("contract-workflows")
    (workflows / "contract").mkdir()
    (workflows / "contract" / "solid.py").write_text(SOLID)
    # Uploads after a valid workflow request go to a closed loopback port, not to the providers' public endpoints.
    closed = f"http://127.0.0.1:{closed_port()}"
    return make_server("contract", WORKFLOW_DIR=str(workflows), AWS_ENDPOINT_URL_S3=closed, HF_ENDPOINT=closed).start()


@pytest.fixture(scope="module")
def contract_schema(contract_server: ApiServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{contract_server.url}/docs/json", config=CONFIG)


def keep_local(value: Any) -> None:
    """Point every URL the server would resolve at a loopback address, which the URL guard refuses without a DNS
    lookup: the requests generated here reach nothing beyond this machine."""
    if isinstance(value, list):
        for item in value:
            keep_local(item)
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        if key in URL_FIELDS and isinstance(item, str):
            try:
                parts = split_url(item)
            except InvalidUrl:
                continue
            if parts.hostname:
                value[key] = parts._replace(netloc="127.0.0.1:9").geturl()
        else:
            keep_local(item)


def _own(path: str) -> bool:
    """A route of this server's own API: Comfy API v2's are checked against its contract (test_v2_contract.py)."""
    return not path.startswith("/api/v2/")


def test_the_document_lists_every_operation_tested_here(contract_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in contract_schema.get_all_operations()]
    assert {operation.label for operation in operations if _own(operation.path)} == set(OPERATIONS)


def test_every_operation_that_reads_a_body_documents_this_servers_errors(contract_server: ApiServer) -> None:
    document = contract_server.http.get("/docs/json").json()
    bodies = [
        operation
        for path, item in document["paths"].items()
        if _own(path)
        for operation in item.values()
        if "requestBody" in operation
    ]
    assert bodies
    for operation in bodies:
        assert "422" not in operation["responses"], operation["operationId"]
        for status in ("400", "413", "415", "4XX"):
            schema = operation["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (operation["operationId"], status)
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_every_documented_example_is_answered_as_documented(contract_schema: schemathesis.BaseSchema) -> None:
    strategies = [
        strategy
        for result in contract_schema.get_all_operations()
        for strategy in result.ok().get_strategies_from_examples()
    ]
    assert strategies, "the document has no examples"
    check_cases(hypothesis.strategies.one_of(strategies), max_examples=len(strategies))


@pytest.mark.parametrize(
    ("label", "mode", "examples"),
    [(label, mode, examples) for label, modes in OPERATIONS.items() for mode, examples in modes.items()],
)
def test_the_server_keeps_to_its_openapi_document(
    contract_schema: schemathesis.BaseSchema, label: str, mode: GenerationMode, examples: int
) -> None:
    operation = contract_schema.find_operation_by_label(label)
    assert operation is not None, label
    check_cases(operation.as_strategy(generation_mode=mode), max_examples=examples)


def check_cases(cases: hypothesis.strategies.SearchStrategy[schemathesis.Case], max_examples: int) -> None:
    """Send `max_examples` cases drawn from `cases`, the same ones on every run, and check each answer."""

    @hypothesis.settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=cases)
    def keeps_to_the_document(case: schemathesis.Case) -> None:
        keep_local(case.body)
        # Generous: a valid workflow request runs a prompt; the bound only keeps a hung server from hanging the test.
        case.call_and_validate(checks=CHECKS, timeout=300)

    keeps_to_the_document()
