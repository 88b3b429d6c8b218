"""Comfy API v2's asset routes (/api/v2/assets...): uploads, the by-hash dedup path, metadata, deletion and content.

An upload's multipart body is parsed as it streams in: the `file` part goes straight to the asset store's temporary
file while it is hashed, never into memory, and the other fields may come before or after it. The upload enforces
its own size limit (the asset store's `max_upload_bytes` for the file, and room for the fields besides), so the
app's body size limit leaves this route alone (UPLOAD_ROUTE).

Content URLs are this server's own content route, absolute, and unsigned: they are valid for as long as the asset
is, so `url_expires_at` is the asset's `expires_at`, or a week from the answer for an asset kept until deleted (the
longest retention the contract lets a request ask for; fetching the asset again gives a later one).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.responses import FileResponse
from starlette.types import Receive, Scope, Send

from ..errors import V2Error
from ..v2.assets import MAX_EXPIRES_IN_S, MIN_EXPIRES_IN_S, SMALL_FILE_BYTES, AssetRecord, AssetStore

router = APIRouter(prefix="/api/v2", tags=["assets"])

# The route whose body BodySizeLimit does not bound (as `(method, path)`).
UPLOAD_ROUTE = ("POST", "/api/v2/assets")

# The text fields of an upload, all together: the file is the only large part.
MAX_FIELD_BYTES = 1024 * 1024
# What a body may hold besides the file and the fields: part headers, boundaries, parts of other names.
MAX_FORM_OVERHEAD = 64 * 1024
# How long a content URL is said to last for an asset kept until deleted.
URL_LIFETIME = timedelta(seconds=MAX_EXPIRES_IN_S)

_SINGLE_RANGE = re.compile(r"bytes=(?:(\d+)-(\d*)|-\d+)")


async def _assets(request: Request) -> AssetStore:
    return request.app.state.assets


AssetsDep = Annotated[AssetStore, Depends(_assets)]


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable, e.g. `not_found`, `hash_mismatch`, `invalid_request`.")
    message: str
    details: dict[str, Any] | None = None


class ErrorEnvelope(BaseModel):
    """Every error under /api/v2."""

    error: ErrorDetail


class Asset(BaseModel):
    """A UUID-identified record over an immutable blob whose content carries a server-computed blake3 hash."""

    id: str
    hash: str | None = Field(description="`blake3:<hex>` of the bytes, computed by the server.")
    size_bytes: int
    content_type: str
    file_path: str | None = None
    created_new: bool | None = Field(
        None,
        description="On create responses: whether the bytes were new (true) or a blob already held them (false).",
    )
    created_at: datetime
    url: str = Field(description="Where the bytes are served (this server's content route).")
    url_expires_at: datetime = Field(
        description="Until when `url` serves the bytes: the asset's `expires_at`, or a week from now for an asset "
        "kept until deleted (fetch the asset again for a later one)."
    )
    expires_at: datetime | None = Field(None, description="When the asset is deleted; absent: kept until deleted.")
    job_id: str | None = Field(None, description="The job that produced the asset; absent for uploads.")


class UploadFields(BaseModel):
    """The fields of an upload besides `file`."""

    content_type: str = Field(min_length=1, examples=["image/png"])
    file_path: str = Field(
        min_length=1,
        description="Placement path or file name, e.g. `photo.png` or `models/checkpoints/x.safetensors`.",
    )
    expected_hash: str | None = Field(
        None,
        description="The client's blake3 (`blake3:<hex>`), checked against the bytes received: 409 `hash_mismatch` "
        "when they differ, and no asset is minted.",
    )
    tags: list[str] = Field(default_factory=list, description="Category tags (e.g. `input`): one part per tag.")
    expires_in: int | None = Field(
        None,
        ge=MIN_EXPIRES_IN_S,
        le=MAX_EXPIRES_IN_S,
        description="Retention override in seconds: the asset expires this long after it is made.",
    )


class FromHashRequest(BaseModel):
    hash: str = Field(examples=["blake3:9f8a1c0d..."])
    file_path: str | None = None
    tags: list[str] = Field(default_factory=list)
    expires_in: int | None = Field(
        None,
        ge=MIN_EXPIRES_IN_S,
        le=MAX_EXPIRES_IN_S,
        description="Retention override in seconds: the asset expires this long after it is made.",
    )


def _upload_body() -> dict[str, Any]:
    schema = UploadFields.model_json_schema()
    schema["properties"] = {
        "file": {"type": "string", "format": "binary", "description": "The bytes."},
        **schema["properties"],
    }
    schema["required"] = ["file", *schema["required"]]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorEnvelope, "description": description}


_UPSTREAM = {500: _error("`upstream_error`: the server could not complete the request")}
_NOT_FOUND = {404: _error("`not_found`: no asset with this id, or it has expired")}
# Declared where FastAPI would otherwise document its own validation error, which no route here sends.
_INVALID = {422: _error("`invalid_request`: a parameter is malformed")}


@router.post(
    "/assets",
    operation_id="postAssets",
    status_code=201,
    response_model=Asset,
    response_model_exclude_none=True,
    responses={
        200: {"model": Asset, "description": "The bytes were stored already; an asset was minted over them."},
        409: _error("`hash_mismatch`: the bytes do not hash to `expected_hash`"),
        413: _error("`payload_too_large`: the file is larger than an upload may be"),
        422: _error("`idempotency_key_reuse`, or `invalid_request`: a field is missing or invalid"),
        507: _error("`storage_full`: the asset store has no room for new bytes"),
        **_UPSTREAM,
    },
    openapi_extra=_upload_body(),
)
async def upload_asset(
    request: Request,
    response: Response,
    store: AssetsDep,
    idempotency_key: Annotated[
        str | None,
        Header(description="Single-use for 24 hours: a second upload with the same key is refused (422)."),
    ] = None,
) -> Asset:
    """Upload an asset (multipart/form-data). The blake3 hash is computed from the bytes received, and bytes the
    server already has are stored once: 201 for new bytes, 200 for an asset minted over stored ones."""
    if idempotency_key is not None:
        await store.check_idempotency_key(idempotency_key)
    form = _UploadForm(request.headers, max_bytes=store.max_upload_bytes + MAX_FIELD_BYTES + MAX_FORM_OVERHEAD)
    async with aclosing(form.file_chunks(request.stream())) as chunks, store.receiving(chunks) as upload:
        fields = form.validated()
        record, created_new = await store.commit(
            upload,
            content_type=fields.content_type,
            file_path=fields.file_path,
            tags=fields.tags,
            expected_hash=fields.expected_hash,
            expires_in_s=fields.expires_in,
            idempotency_key=idempotency_key,
        )
    if not created_new:
        response.status_code = 200
    return _asset(request, record, created_new=created_new)


@router.post(
    "/assets/from-hash",
    operation_id="assetFromHash",
    status_code=201,
    response_model=Asset,
    response_model_exclude_none=True,
    responses={
        200: {"model": Asset, "description": "An identical reference already existed; returned as-is."},
        404: _error("`blob_not_found`: no stored bytes have this hash"),
        422: _error("`invalid_request`: a field is missing or invalid"),
        **_UPSTREAM,
    },
)
async def asset_from_hash(body: FromHashRequest, request: Request, response: Response, store: AssetsDep) -> Asset:
    """Mint an asset over bytes the server already has, named by their blake3 hash (no bytes sent). An unexpired
    upload of the same hash, `file_path` and `tags` is returned instead (200), its expiry moved out to the
    requested one when that is later."""
    record, created = await store.mint_from_hash(
        body.hash, file_path=body.file_path, tags=body.tags, expires_in_s=body.expires_in
    )
    if not created:
        response.status_code = 200
    # Minted over bytes the server had: never new ones.
    return _asset(request, record, created_new=False)


@router.head(
    "/assets/by-hash/{hash}",
    operation_id="headAssetByHash",
    responses={200: {"description": "Bytes with this hash are stored"}, 404: {"description": "None are"}, **_INVALID},
)
async def asset_by_hash(hash: str, store: AssetsDep) -> Response:
    """Whether the server has bytes with this blake3 hash (`blake3:<hex>`), to mint from without uploading them."""
    if not await store.has_blob(hash):
        raise V2Error("blob_not_found", f"No stored bytes have the hash {hash}", status_code=404)
    return Response()


@router.get(
    "/assets/{id}",
    operation_id="getAsset",
    response_model=Asset,
    response_model_exclude_none=True,
    responses={**_NOT_FOUND, **_INVALID, **_UPSTREAM},
)
async def get_asset(id: str, request: Request, store: AssetsDep) -> Asset:
    """The asset's record, with the URL of its content."""
    return _asset(request, await _found(store, id))


@router.delete(
    "/assets/{id}",
    operation_id="deleteAsset",
    status_code=204,
    response_class=Response,
    responses={
        **_NOT_FOUND,
        409: _error("`asset_in_use`: the asset cannot be deleted while the server depends on it"),
        **_INVALID,
        **_UPSTREAM,
    },
)
async def delete_asset(id: str, store: AssetsDep) -> Response:
    """Delete the asset's record; its bytes go with it unless another asset references them. A job's outputs are
    kept for as long as the job (409)."""
    if not await store.delete(id):
        raise _not_found(id)
    return Response(status_code=204)


@router.get(
    "/assets/{id}/content",
    operation_id="getAssetContent",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The content"},
        206: {"content": {"application/octet-stream": {}}, "description": "One byte range of it (`Range: bytes=...`)"},
        416: {"description": "The range starts past the end of the content"},
        **_NOT_FOUND,
        **_INVALID,
        **_UPSTREAM,
    },
)
async def asset_content(id: str, request: Request, store: AssetsDep) -> Response:
    """The asset's bytes, with the asset's content type. A `Range` header of one byte range is answered with that
    range (206); any other `Range` is ignored and the whole content served."""
    record = await _found(store, id)
    name = PurePosixPath(record.file_path).name if record.file_path else record.id
    path = await store.local_content(record)
    response = _ContentResponse(
        path,
        media_type=record.content_type,
        filename=name or record.id,
        content_disposition_type="inline",
        # Blobs never change, so their hash is the strongest validator there is (also for If-Range).
        headers={"etag": f'"{record.digest}"'},
        # One stat here costs less than the worker-thread hop the response would make for it.
        stat_result=os.stat(path),
    )
    if record.size_bytes > SMALL_FILE_BYTES or "range" in request.headers:
        return response
    # A small whole file is read here in one call: opening and reading it through worker threads, as the file
    # response does, costs more than the read (measured in bench/v2.py, where outputs are downloaded at once).
    return Response(path.read_bytes(), headers=dict(response.headers))


class _ContentResponse(FileResponse):
    """A file served with one byte range at most. A `Range` header that is not a single well-formed byte range
    (several ranges, another unit, an end before its start) is dropped, so the whole content is served as HTTP
    allows, where the base class would answer a plain-text 400."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        value = Headers(scope=scope).get("range")
        if value is not None and not _single_range(value):
            scope = {**scope, "headers": [(name, raw) for name, raw in scope["headers"] if name != b"range"]}
        await super().__call__(scope, receive, send)


def _single_range(value: str) -> bool:
    matched = _SINGLE_RANGE.fullmatch(value.strip())
    if matched is None:
        return False
    start, end = matched.groups()
    return not end or int(start) <= int(end)


class _UploadForm:
    """A multipart/form-data body, read as it streams in: the text fields are kept (MAX_FIELD_BYTES in all), the
    bytes of the one `file` part are handed on as they arrive. Parts of other names are skipped unread. A body past
    `max_bytes` in all is refused (413), whatever its parts: the app's body size limit leaves this one alone."""

    _FIELDS = frozenset(UploadFields.model_fields)

    def __init__(self, headers: Headers, *, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        media_type, options = parse_options_header(headers.get("content-type"))
        boundary = options.get(b"boundary")
        if media_type != b"multipart/form-data" or not boundary:
            raise _invalid_body("Send the upload as multipart/form-data (with a boundary)")
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise self._too_large()
        self.values: dict[str, list[str]] = defaultdict(list)
        self.has_file = False
        self.complete = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )
        self._kept = 0
        self._received = 0
        self._file_data: list[bytes] = []
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._part: str | None = None  # the field name of the part being read, when it is one to keep
        self._in_file = False
        self._value = bytearray()

    async def file_chunks(self, body: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        """The `file` part's bytes, read from the whole of `body`: once they are exhausted, the fields are too."""
        try:
            async for chunk in body:
                self._received += len(chunk)
                if self._received > self.max_bytes:
                    raise self._too_large()
                self._feed(chunk)
                data, self._file_data = self._file_data, []
                for piece in data:
                    yield piece
        except ClientDisconnect:
            raise _invalid_body("The client disconnected before the body was complete") from None
        if not self.complete:
            raise _invalid_body("The body ended before the multipart form did")

    def validated(self) -> UploadFields:
        """The fields, checked; RequestValidationError names every one at fault, `file` included."""
        problems: list[dict[str, Any]] = []
        if not self.has_file:
            problems.append({"type": "missing", "loc": ("body", "file"), "msg": "Field required", "input": None})
        given = {name: values if name == "tags" else values[0] for name, values in self.values.items()}
        try:
            fields = UploadFields.model_validate(given)
        except ValidationError as exc:
            problems.extend({**error, "loc": ("body", *error["loc"])} for error in exc.errors())
        if problems:
            raise RequestValidationError(problems)
        return fields

    def _too_large(self) -> V2Error:
        return V2Error(
            "payload_too_large",
            f"The body is larger than the {self.max_bytes} bytes an upload may have, its fields included",
            status_code=413,
            details={"max_bytes": self.max_bytes},
        )

    def _feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise _invalid_body(f"Malformed multipart body: {exc}") from None

    def _on_part_begin(self) -> None:
        self._disposition = b""
        self._part = None
        self._in_file = False
        self._value = bytearray()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name = bytearray()
        self._header_value = bytearray()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = _text(options.get(b"name", b""))
        if name == "file":
            if self.has_file:
                raise _invalid_body("The body has more than one `file` part")
            self.has_file = self._in_file = True
        elif name in self._FIELDS:
            self._part = name

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._file_data.append(data[start:end])
        elif self._part is not None:
            self._kept += end - start
            if self._kept > MAX_FIELD_BYTES:
                raise _invalid_body(f"The text fields are larger than {MAX_FIELD_BYTES} bytes in all")
            self._value += data[start:end]

    def _on_part_end(self) -> None:
        if self._part is not None:
            self.values[self._part].append(_text(bytes(self._value)))

    def _on_end(self) -> None:
        self.complete = True


def _text(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise _invalid_body("A field of the form is not UTF-8 text") from None


def _invalid_body(message: str) -> V2Error:
    return V2Error("invalid_request", message, status_code=422, details={"location": "body"})


async def _found(store: AssetStore, asset_id: str) -> AssetRecord:
    record = await store.get(asset_id)
    if record is None:
        raise _not_found(asset_id)
    return record


def _not_found(asset_id: str) -> V2Error:
    return V2Error("not_found", f"No asset with id {asset_id!r} (it may have expired)", status_code=404)


def _asset(request: Request, record: AssetRecord, *, created_new: bool | None = None) -> Asset:
    expires_at = _time(record.expires_at) if record.expires_at is not None else None
    return Asset(
        id=record.id,
        hash=record.hash,
        size_bytes=record.size_bytes,
        content_type=record.content_type,
        file_path=record.file_path,
        created_new=created_new,
        created_at=_time(record.created_at),
        url=str(request.base_url).rstrip("/") + f"/api/v2/assets/{record.id}/content",
        url_expires_at=expires_at or datetime.now(UTC) + URL_LIFETIME,
        expires_at=expires_at,
        job_id=record.job_id,
    )


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
