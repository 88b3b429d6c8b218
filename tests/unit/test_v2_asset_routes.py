"""The /api/v2/assets routes on an in-process app over a real asset store: uploads as the SDK builds them and with
the fields after the file, the dedup answers (201, 200), the by-hash probe, from-hash, metadata with an absolute
content URL, content whole and by range, deletion, and every refusal in the contract's ErrorEnvelope. Then the
SDK's own asset handles against the same app, and the body size limit leaving uploads to their own."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from blake3 import blake3
from comfy_low import _multipart
from comfy_low.transport import AsyncComfyLow
from comfy_sdk.assets import AsyncAssetFactory
from fastapi import FastAPI
from pydantic import BaseModel

from comfyui_api.api.handlers import install_error_handlers
from comfyui_api.api.middleware import BodySizeLimit
from comfyui_api.api.v2_assets import UPLOAD_ROUTE, router
from comfyui_api.v2.assets import AssetStore

DATA = bytes(range(256)) * 40  # 10240 bytes
OTHER = b"other bytes " * 500
MAX_UPLOAD = 64 * 1024
BOUNDARY = "sdk-like-boundary-1234"


def digest(data: bytes) -> str:
    return "blake3:" + blake3(data).hexdigest()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AssetStore]:
    opened = AssetStore(tmp_path / "assets", retention_s=3600, max_upload_bytes=MAX_UPLOAD, disk_limit_bytes=0)
    await opened.open()
    yield opened
    await opened.close()


def app_over(store: AssetStore) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.assets = store
    return app


@pytest.fixture
async def client(store: AssetStore) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app_over(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def sdk_body(
    data: bytes, *, fields: list[tuple[str, str]] | None = None, file_path: str = "photo.png"
) -> tuple[Iterator[bytes], dict[str, str]]:
    """The multipart body the SDK's post_assets sends, built by the SDK's own code."""
    body, length = _multipart.build_multipart(
        BOUNDARY,
        fields=fields if fields is not None else [("content_type", "image/png"), ("file_path", file_path)],
        file_name=file_path,
        file_obj=io.BytesIO(data),
        file_content_type="image/png",
        file_size=len(data),
    )
    assert length is not None
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Content-Length": str(length)}


async def streamed(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def post_upload(
    client: httpx.AsyncClient, data: bytes = DATA, *, headers: dict[str, str] | None = None, **options: Any
) -> httpx.Response:
    body, body_headers = sdk_body(data, **options)
    return await client.post("/api/v2/assets", content=streamed(body), headers={**body_headers, **(headers or {})})


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    return body["error"]


async def test_an_upload_is_201_with_the_asset(client: httpx.AsyncClient) -> None:
    response = await post_upload(
        client,
        fields=[
            ("content_type", "image/png"),
            ("file_path", "photo.png"),
            ("expected_hash", digest(DATA)),
            ("tags", "input"),
            ("tags", "mine"),
            ("expires_in", "600"),
        ],
    )

    assert response.status_code == 201, response.text
    asset = response.json()
    assert asset["hash"] == digest(DATA)
    assert (asset["size_bytes"], asset["content_type"], asset["file_path"], asset["created_new"]) == (
        len(DATA),
        "image/png",
        "photo.png",
        True,
    )
    assert asset["url"] == f"http://test/api/v2/assets/{asset['id']}/content"
    assert asset["created_at"].endswith("Z")
    assert asset["expires_at"] == asset["url_expires_at"]
    assert "job_id" not in asset


async def test_the_same_bytes_again_are_200_and_not_new(client: httpx.AsyncClient, store: AssetStore) -> None:
    first = (await post_upload(client)).json()

    response = await post_upload(client, file_path="again.png")

    assert response.status_code == 200
    again = response.json()
    assert again["created_new"] is False
    assert again["id"] != first["id"]
    assert again["hash"] == first["hash"]
    assert again["file_path"] == "again.png"


async def test_fields_may_follow_the_file(client: httpx.AsyncClient) -> None:
    body = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="notes.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    body += OTHER + b"\r\n"
    for name, value in [("content_type", "text/plain"), ("file_path", "notes.txt"), ("unknown", "ignored")]:
        body += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    body += f"--{BOUNDARY}--\r\n".encode()

    response = await client.post(
        "/api/v2/assets", content=body, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    )

    assert response.status_code == 201, response.text
    assert (response.json()["hash"], response.json()["content_type"]) == (digest(OTHER), "text/plain")


async def test_an_upload_of_a_browser_form_is_taken(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v2/assets",
        files={"file": ("photo.png", DATA, "image/png")},
        data={"content_type": "image/png", "file_path": "photo.png", "tags": ["a", "b"]},
    )

    assert response.status_code == 201, response.text
    assert response.json()["hash"] == digest(DATA)


async def test_a_wrong_expected_hash_is_409_hash_mismatch(client: httpx.AsyncClient, store: AssetStore) -> None:
    response = await post_upload(
        client,
        fields=[("content_type", "image/png"), ("file_path", "photo.png"), ("expected_hash", digest(OTHER))],
    )

    error = assert_envelope(response, 409, "hash_mismatch")
    assert error["details"] == {"expected_hash": digest(OTHER), "hash": digest(DATA)}
    assert not await store.has_blob(digest(DATA))


@pytest.mark.parametrize(
    ("fields", "location"),
    [
        ([("file_path", "photo.png")], "content_type"),
        ([("content_type", "image/png")], "file_path"),
        ([("content_type", "image/png"), ("file_path", "")], "file_path"),
        ([("content_type", "image/png"), ("file_path", "a.png"), ("expires_in", "59")], "expires_in"),
        ([("content_type", "image/png"), ("file_path", "a.png"), ("expires_in", "soon")], "expires_in"),
    ],
)
async def test_a_missing_or_invalid_field_is_422_invalid_request(
    client: httpx.AsyncClient, store: AssetStore, fields: list[tuple[str, str]], location: str
) -> None:
    response = await post_upload(client, fields=fields)

    error = assert_envelope(response, 422, "invalid_request")
    assert error["message"].startswith(f"{location}: ")
    assert [problem["location"] for problem in error["details"]["errors"]] == [location]
    assert not await store.has_blob(digest(DATA))


async def test_an_upload_without_a_file_is_422_naming_it(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v2/assets", files={"content_type": (None, "x/y"), "file_path": (None, "a")})

    error = assert_envelope(response, 422, "invalid_request")
    assert error["details"]["errors"] == [{"location": "file", "message": "Field required"}]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"file_path": "a.png"}', "application/json"),
        (b"--b\r\nContent-Disposition: form-data", "multipart/form-data; boundary=b"),  # cut short
        (b"", "multipart/form-data"),  # no boundary
    ],
)
async def test_a_body_that_is_not_a_whole_multipart_form_is_422(
    client: httpx.AsyncClient, content: bytes, content_type: str
) -> None:
    response = await client.post("/api/v2/assets", content=content, headers={"Content-Type": content_type})

    error = assert_envelope(response, 422, "invalid_request")
    assert error["details"] == {"location": "body"}


async def test_an_upload_past_the_size_limit_is_413(client: httpx.AsyncClient, store: AssetStore) -> None:
    response = await post_upload(client, b"x" * (MAX_UPLOAD + 1))

    error = assert_envelope(response, 413, "payload_too_large")
    assert error["details"] == {"max_bytes": MAX_UPLOAD}
    assert list((store.blobs / "tmp").iterdir()) == []


async def test_a_body_past_the_limit_in_other_parts_is_413(client: httpx.AsyncClient) -> None:
    chunk = b"y" * 65536

    async def padded() -> AsyncIterator[bytes]:
        yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="padding"\r\n\r\n'.encode()
        for _ in range(2 * 1024 * 1024 // len(chunk)):
            yield chunk

    response = await client.post(
        "/api/v2/assets", content=padded(), headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    )

    assert_envelope(response, 413, "payload_too_large")


async def test_a_declared_length_past_the_limit_is_413_before_the_body_is_read(client: httpx.AsyncClient) -> None:
    read = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        read = True
        yield b""

    response = await client.post(
        "/api/v2/assets",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Content-Length": str(10**12)},
    )

    assert_envelope(response, 413, "payload_too_large")
    assert not read


async def test_an_idempotency_key_is_single_use(client: httpx.AsyncClient) -> None:
    first = await post_upload(client, headers={"Idempotency-Key": "key-1"})
    assert first.status_code == 201

    again = await post_upload(client, OTHER, headers={"Idempotency-Key": "key-1"})
    assert_envelope(again, 422, "idempotency_key_reuse")
    other = await post_upload(client, OTHER, headers={"Idempotency-Key": "key-2"})
    assert other.status_code == 201


async def test_the_by_hash_probe_says_whether_the_bytes_are_stored(client: httpx.AsyncClient) -> None:
    await post_upload(client)

    assert (await client.head(f"/api/v2/assets/by-hash/{digest(DATA)}")).status_code == 200
    assert (await client.head(f"/api/v2/assets/by-hash/{digest(OTHER)}")).status_code == 404
    assert (await client.head("/api/v2/assets/by-hash/not-a-hash")).status_code == 404


async def test_from_hash_mints_over_stored_bytes(client: httpx.AsyncClient) -> None:
    uploaded = (await post_upload(client)).json()

    response = await client.post(
        "/api/v2/assets/from-hash", json={"hash": digest(DATA), "file_path": "copy.png", "expires_in": 60}
    )

    assert response.status_code == 201, response.text
    minted = response.json()
    assert minted["id"] != uploaded["id"]
    assert (minted["hash"], minted["size_bytes"], minted["content_type"]) == (digest(DATA), len(DATA), "image/png")
    assert (minted["file_path"], minted["created_new"]) == ("copy.png", False)
    content = await client.get(minted["url"])
    assert content.content == DATA


async def test_from_hash_of_an_identical_reference_is_200_with_it(client: httpx.AsyncClient) -> None:
    uploaded = (await post_upload(client)).json()

    response = await client.post("/api/v2/assets/from-hash", json={"hash": digest(DATA), "file_path": "photo.png"})

    assert response.status_code == 200
    assert response.json()["id"] == uploaded["id"]


async def test_from_hash_of_unknown_bytes_is_404_blob_not_found(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v2/assets/from-hash", json={"hash": digest(OTHER)})

    assert_envelope(response, 404, "blob_not_found")


async def test_from_hash_without_a_hash_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v2/assets/from-hash", json={"file_path": "a.png"})

    error = assert_envelope(response, 422, "invalid_request")
    assert error["details"]["errors"][0]["location"] == "hash"


async def test_an_asset_is_read_with_an_absolute_content_url(store: AssetStore) -> None:
    transport = httpx.ASGITransport(app=app_over(store), root_path="/behind/a/proxy")
    async with httpx.AsyncClient(transport=transport, base_url="https://api.example") as client:
        uploaded = (await post_upload(client)).json()

        response = await client.get(f"/api/v2/assets/{uploaded['id']}")

    assert response.status_code == 200
    asset = response.json()
    assert asset["url"] == f"https://api.example/behind/a/proxy/api/v2/assets/{uploaded['id']}/content"
    assert "created_new" not in asset
    assert {key: asset[key] for key in ("id", "hash", "size_bytes", "expires_at")} == {
        key: uploaded[key] for key in ("id", "hash", "size_bytes", "expires_at")
    }


async def test_an_unknown_asset_is_404_not_found(client: httpx.AsyncClient) -> None:
    assert_envelope(await client.get("/api/v2/assets/no-such-id"), 404, "not_found")
    assert_envelope(await client.get("/api/v2/assets/no-such-id/content"), 404, "not_found")


async def test_content_is_served_whole_with_its_type_and_name(client: httpx.AsyncClient) -> None:
    asset = (await post_upload(client, file_path="photo.png")).json()

    response = await client.get(asset["url"])

    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-disposition"] == 'inline; filename="photo.png"'
    assert response.headers["etag"] == f'"{blake3(DATA).hexdigest()}"'


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [("bytes=0-99", 0, 99), ("bytes=100-", 100, len(DATA) - 1), ("bytes=-10", len(DATA) - 10, len(DATA) - 1)],
)
async def test_one_byte_range_is_206_with_exactly_those_bytes(
    client: httpx.AsyncClient, range_header: str, start: int, end: int
) -> None:
    asset = (await post_upload(client)).json()

    response = await client.get(asset["url"], headers={"Range": range_header})

    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert response.content == DATA[start : end + 1]


async def test_a_range_past_the_end_is_416(client: httpx.AsyncClient) -> None:
    asset = (await post_upload(client)).json()

    response = await client.get(asset["url"], headers={"Range": f"bytes={len(DATA)}-"})

    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("range_header", ["bytes=0-1,5-9", "bytes=9-5", "items=0-1", "bytes=abc"])
async def test_any_other_range_is_ignored_and_the_whole_content_served(
    client: httpx.AsyncClient, range_header: str
) -> None:
    asset = (await post_upload(client)).json()

    response = await client.get(asset["url"], headers={"Range": range_header})

    assert response.status_code == 200
    assert response.content == DATA


async def test_a_deleted_asset_is_204_then_404(client: httpx.AsyncClient, store: AssetStore) -> None:
    asset = (await post_upload(client)).json()

    deleted = await client.delete(f"/api/v2/assets/{asset['id']}")

    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_envelope(await client.get(f"/api/v2/assets/{asset['id']}"), 404, "not_found")
    assert_envelope(await client.delete(f"/api/v2/assets/{asset['id']}"), 404, "not_found")
    assert (await client.head(f"/api/v2/assets/by-hash/{digest(DATA)}")).status_code == 404


async def test_a_job_output_is_read_but_not_deleted(
    client: httpx.AsyncClient, store: AssetStore, tmp_path: Path
) -> None:
    output = tmp_path / "ComfyUI_00001_.png"
    output.write_bytes(OTHER)
    record = await store.add_output(
        output, job_id="job-1", file_path="ComfyUI_00001_.png", content_type="image/png", expires_at=None
    )

    asset = (await client.get(f"/api/v2/assets/{record.id}")).json()
    assert asset["job_id"] == "job-1"
    assert "expires_at" not in asset
    assert (await client.get(asset["url"])).content == OTHER
    assert_envelope(await client.delete(f"/api/v2/assets/{record.id}"), 409, "asset_in_use")


async def test_the_sdk_uploads_then_dedups_then_reads_and_deletes(store: AssetStore) -> None:
    transport = httpx.ASGITransport(app=app_over(store))
    async with httpx.AsyncClient(transport=transport) as http:
        low = AsyncComfyLow("http://test", None, client=http)
        assets = AsyncAssetFactory(low)

        first = assets.from_bytes(DATA, filename="photo.png")
        first_id = await first.commit()
        assert first.created_new is True
        assert first.hash == digest(DATA)

        # The second handle finds the bytes with the HEAD probe and mints over them from their hash.
        second = assets.from_bytes(DATA, filename="copy.png")
        second_id = await second.commit()
        assert second.created_new is False
        assert second_id != first_id

        fetched = await assets.get(first_id)
        assert fetched.file_path == "photo.png"
        async with low.get_asset_content(first_id, range=(10, 19)) as response:
            assert response.status_code == 206
            assert await response.aread() == DATA[10:20]
        url, expires_at = await low.get_asset_content_url(first_id)
        assert (url, expires_at) == (f"http://test/api/v2/assets/{first_id}/content", None)

        await first.delete()
        assert await store.get(first_id) is None
        assert (await store.local_content((await store.get(second_id)) or pytest.fail("gone"))).read_bytes() == DATA


async def test_the_body_size_limit_leaves_uploads_to_their_own_limit(store: AssetStore) -> None:
    app = app_over(store)

    class Echo(BaseModel):
        text: str

    @app.post("/echo")
    async def echo(body: Echo) -> Echo:
        return body

    app.add_middleware(BodySizeLimit, max_bytes=1024, unlimited={UPLOAD_ROUTE})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        uploaded = await post_upload(client, DATA)
        too_large = await client.post("/echo", json={"text": "x" * 2048})
        from_hash = await client.post("/api/v2/assets/from-hash", json={"hash": digest(DATA), "file_path": "x" * 2048})

    assert uploaded.status_code == 201
    assert too_large.status_code == 413
    assert from_hash.status_code == 413


def test_the_openapi_document_describes_the_routes_as_the_contract_names_them(store: AssetStore) -> None:
    paths = app_over(store).openapi()["paths"]

    operations = {
        (path, method): operation["operationId"]
        for path, methods in paths.items()
        for method, operation in methods.items()
    }
    assert operations == {
        ("/api/v2/assets", "post"): "postAssets",
        ("/api/v2/assets/from-hash", "post"): "assetFromHash",
        ("/api/v2/assets/by-hash/{hash}", "head"): "headAssetByHash",
        ("/api/v2/assets/{id}", "get"): "getAsset",
        ("/api/v2/assets/{id}", "delete"): "deleteAsset",
        ("/api/v2/assets/{id}/content", "get"): "getAssetContent",
    }
    upload = paths["/api/v2/assets"]["post"]
    schema = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["file", "content_type", "file_path"]
    assert schema["properties"]["file"] == {"type": "string", "format": "binary", "description": "The bytes."}
    assert set(upload["responses"]) == {"200", "201", "409", "413", "422", "500", "507"}
    assert upload["responses"]["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorEnvelope"
    }
