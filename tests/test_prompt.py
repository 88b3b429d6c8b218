"""POST /prompt end to end against a real ComfyUI running real graphs on a random-weight checkpoint."""

from __future__ import annotations

import base64
import concurrent.futures
import io
from typing import Any

import pytest
from PIL import Image

from tests.support.graphs import img2img, node, png_bytes, solid, txt2img
from tests.support.server import ApiServer, wait_until


def decode_image(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def run(server: ApiServer, graph: dict[str, Any], **fields: Any) -> dict[str, Any]:
    response = server.http.post("/prompt", json={"prompt": graph, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def test_txt2img_returns_png_of_requested_size(server: ApiServer) -> None:
    body = run(server, txt2img(96, 64, steps=2), id="txt2img-size")
    assert len(body["images"]) == 1
    image = decode_image(body["images"][0])
    assert (image.format, image.size) == ("PNG", (96, 64))
    assert body["filenames"] == ["txt2img-size_txt2img_00001_.png"]
    assert body["id"] == "txt2img-size"
    # The echoed prompt is the one ComfyUI ran: the prefix carries the request id.
    assert body["prompt"]["7"]["inputs"]["filename_prefix"] == "txt2img-size_txt2img"


def test_stats_are_the_flat_reference_shape(server: ApiServer) -> None:
    stats = run(server, txt2img())["stats"]
    assert set(stats) == {
        "comfy_execution",
        "preprocess_time",
        "comfy_round_trip_time",
        "postprocess_time",
        "upload_time",
        "total_time",
    }
    execution = stats["comfy_execution"]
    assert execution["end"] >= execution["start"] > 0
    assert execution["duration"] == execution["end"] - execution["start"]
    # Every non-cached node reported its start; the sampler certainly ran.
    assert "5" in execution["nodes"] and execution["nodes"]["5"]["start"] >= execution["start"]
    assert stats["total_time"] >= stats["comfy_round_trip_time"] >= 0


def test_batch_of_four_returns_four_images(server: ApiServer) -> None:
    body = run(server, txt2img(64, 64, batch=4, seed=7))
    assert len(body["images"]) == 4 and len(body["filenames"]) == 4
    assert len(set(body["filenames"])) == 4
    for data in body["images"]:
        assert decode_image(data).size == (64, 64)


def test_two_saving_nodes_come_back_in_a_stable_order(server: ApiServer) -> None:
    graph = {
        "1": node("EmptyImage", width=32, height=32, batch_size=1, color=0xFF0000),
        "2": node("SaveImage", images=["1", 0], filename_prefix="first"),
        "3": node("EmptyImage", width=48, height=48, batch_size=1, color=0x00FF00),
        "4": node("SaveImage", images=["3", 0], filename_prefix="second"),
    }
    orders = []
    for attempt in range(3):
        body = run(server, graph, id=f"order-{attempt}")
        assert len(body["images"]) == 2
        sizes = [decode_image(data).size for data in body["images"]]
        names = [name.split("_")[1] for name in body["filenames"]]
        # Each image sits beside its own file name.
        assert dict(zip(names, sizes, strict=True)) == {"first": (32, 32), "second": (48, 48)}
        orders.append(names)
    assert orders[0] == orders[1] == orders[2]


def test_outputs_over_a_mebibyte_are_streamed_whole_and_in_order(server: ApiServer) -> None:
    # Small outputs are answered in one piece; these (noise compresses badly: ~3 MB of PNG each) take the
    # streamed path, which must give the same JSON with every image whole, each beside its own file name.
    graph = {
        "1": node("EmptyImage", width=1024, height=1024, batch_size=1, color=0x808080),
        "2": node("ImageAddNoise", image=["1", 0], seed=1, strength=0.5),
        "3": node("SaveImage", images=["2", 0], filename_prefix="noisy"),
        "4": node("EmptyImage", width=40, height=40, batch_size=1, color=0x00FF00),
        "5": node("SaveImage", images=["4", 0], filename_prefix="small"),
    }
    response = server.http.post("/prompt", json={"prompt": graph, "id": "streamed"})
    assert response.status_code == 200, response.text
    # Streamed, with its length declared up front (computed without reading the files).
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()
    images = zip(body["filenames"], body["images"], strict=True)
    sizes = {name.split("_")[1]: decode_image(data).size for name, data in images}
    assert sizes == {"noisy": (1024, 1024), "small": (40, 40)}
    assert len(base64.b64decode(body["images"][body["filenames"].index("streamed_noisy_00001_.png")])) > 1024 * 1024
    assert body["id"] == "streamed" and body["stats"]["comfy_execution"]["duration"] >= 0
    wait_until(lambda: not server.files_under("output"), 30, "the outputs to be deleted")


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda: base64.b64encode(png_bytes(80, 80)).decode(), id="base64-png"),
        pytest.param(lambda: base64.b64encode(png_bytes(80, 80, fmt="JPEG")).decode(), id="base64-jpeg"),
        pytest.param(lambda: "data:image/png;base64," + base64.b64encode(png_bytes(80, 80)).decode(), id="data-url"),
    ],
)
def test_img2img_from_inline_image(server: ApiServer, encode: Any) -> None:
    body = run(server, img2img(encode(), size=64))
    assert decode_image(body["images"][0]).size == (64, 64)
    # The inline image was written to a file for ComfyUI, and that file is gone again.
    written = body["prompt"]["8"]["inputs"]["image"]
    assert written.startswith(str(server.base / "input"))
    assert not (server.base / "input").joinpath(written).exists()


def test_a_file_already_in_the_input_folder_is_left_alone(server: ApiServer) -> None:
    (server.base / "input" / "existing.png").write_bytes(png_bytes(64, 64, (10, 200, 10)))
    body = run(server, img2img("existing.png", size=64))
    assert body["prompt"]["8"]["inputs"]["image"] == "existing.png"
    assert (server.base / "input" / "existing.png").exists()


def test_output_and_input_files_are_deleted_afterwards(server: ApiServer) -> None:
    inline = base64.b64encode(png_bytes(64, 64)).decode()
    graph = img2img(inline, size=64)
    graph["7"]["inputs"]["filename_prefix"] = "nested/deeper/img"
    body = run(server, graph, id="cleanup")
    assert body["filenames"] == ["cleanup_nested/deeper/img_00001_.png"]
    assert server.files_under("output") == []
    assert not any(path.name.endswith(".png") and "existing" not in path.name for path in server.files_under("input"))


def test_invalid_base64_is_a_400_at_its_location(server: ApiServer) -> None:
    response = server.http.post("/prompt", json={"prompt": img2img("A" * 61 + "=")})
    assert response.status_code == 400
    body = response.json()
    assert body["location"] == "prompt.8.inputs.image"
    assert body["error"].startswith("Failed to download image for node 8: Failed to parse base64 encoded file")


def test_a_graph_comfyui_rejects_is_a_400_with_node_errors(server: ApiServer) -> None:
    response = server.http.post("/prompt", json={"prompt": solid(0, 64)})
    assert response.status_code == 400
    body = response.json()
    assert body["location"] == "prompt"
    assert body["error"] == "Prompt outputs failed validation"
    errors = body["node_errors"]["1"]["errors"]
    assert errors[0]["type"] == "value_smaller_than_min" and errors[0]["details"] == "width"


def test_unknown_node_type_is_a_400(server: ApiServer) -> None:
    graph = solid(8, 8)
    graph["1"]["class_type"] = "NoSuchNode"
    response = server.http.post("/prompt", json={"prompt": graph})
    assert response.status_code == 400
    assert "NoSuchNode" in response.json()["error"]


def test_a_runtime_failure_is_a_500_naming_the_node(server: ApiServer) -> None:
    (server.base / "input" / "corrupt.png").write_text("this is not an image")
    response = server.http.post("/prompt", json={"prompt": img2img("corrupt.png")})
    assert response.status_code == 500
    body = response.json()
    assert body["node_id"] == "8" and body["node_type"] == "LoadImage"
    assert body["exception_type"] == "PIL.UnidentifiedImageError"
    assert "corrupt.png" in body["exception_message"]
    # No server paths leak.
    assert str(server.base) not in response.text
    assert "traceback" not in body


def test_a_prompt_without_a_saving_node_is_a_400(server: ApiServer) -> None:
    graph = {
        "1": node("EmptyImage", width=8, height=8, batch_size=1, color=0),
        "2": node("PreviewImage", images=["1", 0]),
    }
    response = server.http.post("/prompt", json={"prompt": graph})
    assert response.status_code == 400
    assert response.json() == {
        "error": 'Prompt must contain a node with a "filename_prefix" input, such as "SaveImage"',
        "location": "prompt",
    }


def test_preview_outputs_are_not_returned(server: ApiServer) -> None:
    graph = solid(16, 16)
    graph["3"] = node("PreviewImage", images=["1", 0])
    body = run(server, graph)
    assert len(body["images"]) == 1 and body["filenames"][0].endswith(".png")


def test_twenty_concurrent_requests_each_get_their_own_outputs(server: ApiServer) -> None:
    def one(index: int) -> tuple[int, dict[str, Any]]:
        return index, run(server, solid(16 + index, 8 + index, color=index * 1000), id=f"concurrent-{index}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    for index, body in results:
        assert body["id"] == f"concurrent-{index}"
        assert body["filenames"] == [f"concurrent-{index}_solid_00001_.png"]
        image = decode_image(body["images"][0]).convert("RGB")
        assert image.size == (16 + index, 8 + index)
        assert image.getpixel((0, 0)) == ((index * 1000) >> 16 & 255, (index * 1000) >> 8 & 255, index * 1000 & 255)
    assert server.files_under("output") == []


def test_unknown_fields_are_ignored(server: ApiServer) -> None:
    body = run(server, solid(8, 8), something_else={"x": 1})
    assert "something_else" not in body


@pytest.mark.parametrize("bad_id", ["../escape", "a/b", "a\\b", "tab\there", "", "\u00e9" * 101])
def test_an_id_that_could_escape_a_folder_is_a_400(server: ApiServer, bad_id: str) -> None:
    response = server.http.post("/prompt", json={"prompt": solid(8, 8), "id": bad_id})
    assert response.status_code == 400
    assert response.json()["location"] == "id"


def test_a_missing_class_type_names_the_field(server: ApiServer) -> None:
    response = server.http.post("/prompt", json={"prompt": {"1": {"inputs": {}}}})
    assert response.status_code == 400
    assert response.json()["location"] == "prompt.1.class_type"


def test_malformed_json_is_a_400(server: ApiServer) -> None:
    response = server.http.post("/prompt", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("Malformed JSON body")


def test_a_body_over_the_limit_is_a_413(server: ApiServer) -> None:
    big = base64.b64encode(b"\0" * (3 * 1024 * 1024)).decode()
    response = server.http.post("/prompt", json={"prompt": img2img(big)})
    assert response.status_code == 413
    assert response.json()["location"] == "body"
    # The server keeps serving.
    assert server.http.get("/health").status_code == 200


def test_interrupt_of_an_unknown_id_is_a_404(server: ApiServer) -> None:
    response = server.http.post("/interrupt", json={"id": "never-sent"})
    assert response.status_code == 404
    assert response.json() == {"id": "never-sent", "interrupted": "failed"}


def test_docs_and_openapi_are_served(server: ApiServer) -> None:
    assert server.http.get("/docs").status_code == 200
    document = server.http.get("/docs/json").json()
    assert {"/prompt", "/interrupt", "/health", "/ready"} <= set(document["paths"])
    assert server.http.get("/docs/yaml").text.startswith("openapi:")


def test_probes_report_healthy_and_ready(server: ApiServer) -> None:
    assert server.http.get("/health").json()["status"] == "healthy"
    assert server.http.get("/ready").json()["status"] == "ready"


def test_every_log_line_is_json_and_request_lines_carry_the_request_id(server: ApiServer) -> None:
    run(server, solid(8, 8), id="logged-request")

    def messages() -> set[str]:
        return {entry["msg"] for entry in server.log_entries() if entry.get("request_id") == "logged-request"}

    # The access line is written once the response has been sent, possibly just after the client read it.
    wait_until(lambda: {"prompt completed", "request"} <= messages(), 30, "the request's log lines")
    entries = server.log_entries()
    assert all("raw" not in entry for entry in entries), [e for e in entries if "raw" in e][:3]


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("graph", "location"),
    [
        # Nested this deep, an input kills ComfyUI's prompt worker while its HTTP server keeps answering.
        ({**solid(8, 8), "3": node("PrimitiveNode", value=nested(500))}, "prompt.3.inputs.value"),
        ({**solid(8, 8), "3": {**node("EmptyImage", width=8), "_meta": {"title": nested(500)}}}, "prompt.3._meta"),
        (
            {
                "1": node("EmptyImage", width=8, height=8, batch_size=1, color=0),
                "2": node("SaveImage", images=["1", 0], filename_prefix="a\u0000b"),
            },
            "prompt.2.inputs.filename_prefix",
        ),
        (
            {
                "1": node("EmptyImage", width=8, height=8, batch_size=1, color=0),
                "2": node("SaveImage", images=["1", 0], filename_prefix="../../escape"),
            },
            "prompt.2.inputs.filename_prefix",
        ),
        ({**solid(8, 8), "3": node("LoadImage", image="")}, "prompt.3.inputs.image"),
    ],
    ids=["nested-500", "nested-meta", "nul-prefix", "dotdot-prefix", "empty-image"],
)
def test_inputs_comfyui_cannot_take_are_a_400_and_the_server_keeps_serving(
    server: ApiServer, graph: dict[str, Any], location: str
) -> None:
    inputs_before = server.files_under("input")
    response = server.http.post("/prompt", json={"prompt": graph})
    assert response.status_code == 400, response.text
    assert response.json()["location"] == location
    assert server.files_under("input") == inputs_before and server.files_under("output") == []
    assert run(server, solid(8, 8, color=0x123456))["images"]  # ComfyUI still runs prompts


def test_a_webhook_that_is_not_a_url_is_a_400_before_anything_runs(server: ApiServer) -> None:
    response = server.http.post("/prompt", json={"prompt": solid(8, 8), "webhook_v2": "not a url"})
    assert response.status_code == 400, response.text
    assert response.json()["location"] == "webhook_v2"
    assert "only http and https URLs are allowed" in response.json()["error"]


def test_the_same_id_and_graph_sent_twice_both_succeed(server: ApiServer) -> None:
    """ComfyUI's cache would answer the second run with the first run's outputs, deleted after delivery."""
    graph = solid(8, 8, color=0x0A0B0C)
    first, second = (run(server, graph, id="twice") for _ in range(2))
    assert first["filenames"] == second["filenames"] == ["twice_solid_00001_.png"]
    assert decode_image(first["images"][0]).tobytes() == decode_image(second["images"][0]).tobytes()
    assert "comfyui_api_run" not in second["prompt"]["2"]["inputs"]  # the echoed graph is the client's
    assert server.files_under("output") == []


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
def test_an_upload_block_this_server_cannot_serve_is_a_400_before_the_prompt_runs(
    server: ApiServer, async_: bool
) -> None:
    """The reference server drops an `azure_blob_upload` it has no Azure settings for and answers base64 images; here
    it is refused before any work, also when async (never a 202, then a failure after the prompt ran)."""
    block = {"container": "outputs", "async": async_}
    response = server.http.post("/prompt", json={"prompt": solid(8, 8), "azure_blob_upload": block})
    assert response.status_code == 400, response.text
    assert response.json()["location"] == "azure_blob_upload"
    assert response.json()["error"] == (
        "azure_blob_upload: Azure Blob uploads need AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT"
    )
    assert server.comfy_queue() == ([], []) and server.files_under("output") == []
