"""Workflow endpoints: each Python module under WORKFLOW_DIR that defines a pydantic `RequestSchema` and a
`generate_workflow(input) -> dict` (sync or async) becomes `POST /workflow/<relative path without .py>`.

The body is every /prompt field but `prompt`, plus `input` (validated by RequestSchema); the generated graph
runs through the prompt pipeline directly, and the response is /prompt's plus `input`. A module that fails to
import or lacks the two names is skipped with one log line naming the file and the reason, and so is each of the
reference server's TypeScript and JavaScript workflow files, with a pointer to the README's migration section.
"""

import importlib.util
import inspect
import logging
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Self

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import (
    AliasChoices,
    AliasPath,
    BaseModel,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic.fields import FieldInfo

from ..api.deps import DeliveryDep, SettingsDep
from ..api.disconnect import deliver
from ..api.prompt import PROMPT_RESPONSES
from ..api.schemas import PromptResponse
from ..config import Settings
from ..errors import BadRequest
from ..logs import request_id_var
from ..pipeline.delivery import Delivery
from ..pipeline.request import PromptOptions, PromptRequest
from .docs import inputs_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workflow:
    route: str  # "sd1.5/txt2img"
    schema: type[BaseModel]
    generate: Callable[[Any], Any]
    summary: str | None
    description: str | None
    source: Path


# Where the README tells how to rewrite a reference workflow (a TypeScript module) as a Python one.
MIGRATION_DOC = "README.md#migrating-typescript-workflows"


def discover(folder: Path) -> list[Workflow]:
    """Every valid workflow module under `folder`, in path order; invalid ones are logged and skipped."""
    if not folder.is_dir():
        return []
    for path in _files(folder, "*.ts", "*.js"):
        # The reference's workflows: a folder mounted from it would otherwise give no routes and no hint why.
        logger.warning(
            "skipping a TypeScript/JavaScript workflow file: workflows are Python modules here; see the README's "
            "section 'Migrating TypeScript workflows'",
            extra={"file": str(path), "docs": MIGRATION_DOC},
        )
    found = []
    for path in _files(folder, "*.py"):
        route = path.relative_to(folder).with_suffix("").as_posix()
        try:
            module = _import(path, route)
            found.append(_workflow(module, route, path))
        except Exception as exc:  # an author's module may raise anything while importing
            logger.error(
                "skipping workflow module", extra={"file": str(path), "reason": f"{type(exc).__name__}: {exc}"}
            )
    return found


def _files(folder: Path, *patterns: str) -> list[Path]:
    """The files under `folder` matching a pattern, in path order, but for names starting with `_` or `.` (and
    anything in such a folder, or in a node_modules folder a TypeScript project may have)."""
    found = []
    for pattern in patterns:
        for path in folder.rglob(pattern):
            parts = path.relative_to(folder).parts
            if path.is_file() and not any(part.startswith(("_", ".")) or part == "node_modules" for part in parts):
                found.append(path)
    return sorted(found)


def _import(path: Path, route: str) -> ModuleType:
    name = "comfyui_api_workflows." + re.sub(r"\W", "_", route)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError("not a loadable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _workflow(module: ModuleType, route: str, path: Path) -> Workflow:
    schema = getattr(module, "RequestSchema", None)
    generate = getattr(module, "generate_workflow", None)
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        raise TypeError("it defines no pydantic model named RequestSchema")
    if not callable(generate):
        raise TypeError("it defines no function named generate_workflow")
    return Workflow(
        route=route,
        schema=schema,
        generate=generate,
        summary=getattr(module, "summary", None),
        description=getattr(module, "description", None),
        source=path,
    )


class WorkflowBody(PromptOptions):
    """A workflow request (`mount` adds its `input`), which remembers the `input` fields its schema ignored."""

    _ignored: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _note_ignored(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        body = handler(data)
        if isinstance(data, dict):
            body._ignored = list(ignored_fields(data.get("input"), getattr(body, "input", None), "input"))
        return body

    @property
    def ignored(self) -> list[str]:
        """The paths (`input.cfg`, `input.lora.weight`) of the fields validation dropped, in request order."""
        return self._ignored


def ignored_fields(raw: Any, value: Any, path: str) -> Iterator[str]:
    """The keys of the JSON `raw` that validating it into `value` dropped, at every level of nested models (pydantic,
    like the reference's zod, ignores unknown keys without a word)."""
    if isinstance(value, BaseModel) and isinstance(raw, dict):
        names = {key: name for name, field in type(value).model_fields.items() for key in _keys(name, field)}
        for key, item in raw.items():
            if key in names:
                yield from ignored_fields(item, getattr(value, names[key]), f"{path}.{key}")
            elif key not in (value.model_extra or {}):
                yield f"{path}.{key}"
    elif isinstance(value, dict) and isinstance(raw, dict):
        for key, item in raw.items():
            if key in value:
                yield from ignored_fields(item, value[key], f"{path}.{key}")
    elif isinstance(value, list | tuple) and isinstance(raw, list) and len(value) == len(raw):
        for index, (item, validated) in enumerate(zip(raw, value, strict=True)):
            yield from ignored_fields(item, validated, f"{path}.{index}")


def _keys(name: str, field: FieldInfo) -> set[str]:
    """The keys a field may be read from: its name, its alias, and the first key of each validation alias."""
    keys = {name}
    choices = field.validation_alias.choices if isinstance(field.validation_alias, AliasChoices) else []
    for alias in (field.alias, field.validation_alias, *choices):
        if isinstance(alias, str):
            keys.add(alias)
        elif isinstance(alias, AliasPath) and isinstance(alias.path[0], str):
            keys.add(alias.path[0])
    return keys


def mount(app: FastAPI, workflows: list[Workflow], *, markdown_descriptions: bool) -> None:
    for workflow in workflows:
        name = "".join(part.capitalize() for part in re.split(r"\W+", workflow.route) if part)
        body_model = create_model(f"{name}Request", __base__=WorkflowBody, input=(workflow.schema, ...))
        response_model = create_model(f"{name}Response", __base__=PromptResponse, input=(workflow.schema, ...))
        description = inputs_table(workflow.schema) if markdown_descriptions else workflow.description
        if markdown_descriptions and workflow.description:
            description = f"{workflow.description}\n\n{description}"
        app.add_api_route(
            f"/workflow/{workflow.route}",
            _endpoint(workflow, body_model),
            methods=["POST"],
            summary=workflow.summary or workflow.route,
            description=description,
            response_model=response_model,
            responses=PROMPT_RESPONSES,
            tags=["workflows"],
            name=f"workflow_{name}",
        )
        logger.info("workflow endpoint", extra={"route": f"/workflow/{workflow.route}", "file": str(workflow.source)})
    app.openapi_schema = None  # rebuilt with the new routes on the next request for it


def _endpoint(workflow: Workflow, body_model: type[WorkflowBody]) -> Callable[..., Any]:
    async def run_workflow(body: Any, delivery: Delivery, settings: Settings, http: Request) -> Response:
        request_id_var.set(body.id)
        if body.ignored:
            # Ignored as the reference does, but said: a misspelt or renamed field (`cfg` for `cfg_scale`) would
            # otherwise run with its default without anyone noticing.
            logger.warning(
                "ignoring input fields the workflow does not know",
                extra={"route": f"/workflow/{workflow.route}", "fields": body.ignored},
            )
        user_input = body.input
        try:
            graph = workflow.generate(user_input)
            if inspect.isawaitable(graph):
                graph = await graph
        except Exception as exc:  # the author's code: any failure is the input's fault from the caller's view
            raise BadRequest(f"Failed to generate workflow prompt: {exc}", location="input") from None
        fields = body.model_dump(by_alias=True, exclude={"input"}, exclude_none=True)
        try:
            request = PromptRequest.model_validate({**fields, "prompt": graph})
        except ValidationError as exc:
            raise BadRequest(
                f"Failed to generate workflow prompt: the graph is invalid: {exc}", location="input"
            ) from None
        return await deliver(
            http,
            delivery,
            request,
            cancel_on_disconnect=settings.cancel_on_disconnect,
            extra={"input": user_input.model_dump(mode="json")},
        )

    # FastAPI reads the body's type from the signature; the model is made at runtime, so set it explicitly.
    run_workflow.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=body_model),
            inspect.Parameter("delivery", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=DeliveryDep),
            inspect.Parameter("settings", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=SettingsDep),
            inspect.Parameter("http", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
        ],
        return_annotation=Response,
    )
    return run_workflow
