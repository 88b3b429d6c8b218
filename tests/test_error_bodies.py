"""Error bodies end to end: what the HTTP layer itself refuses (an unknown route, a method a route does not take, a
body that is not UTF-8 or that nests too deeply to parse) answers in the JSON error shape of every other error,
`{"error", "location"?}`, never FastAPI's `{"detail": …}`, and reaches no ComfyUI."""

from __future__ import annotations

import pytest

from tests.support.server import ApiServer

JSON = {"content-type": "application/json"}
# Far deeper than any JSON parser here recurses (Python's stops near 1000 levels), and within the shared server's
# MAX_BODY_SIZE_MB of 2: 200 kB.
DEPTH = 100_000


def assert_json_error(response_headers: dict[str, str], body: object) -> None:
    assert response_headers["content-type"] == "application/json"
    assert isinstance(body, dict) and "detail" not in body and isinstance(body["error"], str)


def test_an_unknown_route_is_a_json_404(server: ApiServer) -> None:
    response = server.http.get("/no/such/route")

    assert response.status_code == 404
    assert_json_error(dict(response.headers), response.json())
    assert response.json() == {"error": "Not Found"}


def test_a_method_the_route_does_not_take_is_a_json_405(server: ApiServer) -> None:
    response = server.http.get("/prompt")

    assert response.status_code == 405
    assert response.json() == {"error": "Method Not Allowed"}
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize("path", ["/prompt", "/download", "/interrupt"])
def test_a_body_that_is_not_utf8_is_a_400_at_body(server: ApiServer, path: str) -> None:
    response = server.http.post(path, content=b'{"prompt": "\xff"}', headers=JSON)

    assert response.status_code == 400
    assert_json_error(dict(response.headers), response.json())
    assert response.json() == {
        "error": "Malformed JSON body: 'utf-8' codec can't decode byte 0xff in position 12: invalid start byte",
        "location": "body",
    }


@pytest.mark.parametrize(
    "body",
    [
        b"[" * DEPTH,
        b"[" * DEPTH + b"]" * DEPTH,
        b'{"prompt": {"1": {"class_type": "SaveImage", "inputs": {"x": ' + b"[" * DEPTH + b"]" * DEPTH + b"}}}}",
        b'{"a": ' * DEPTH + b"1" + b"}" * DEPTH,
    ],
    ids=["unclosed-arrays", "closed-arrays", "inside-an-input", "objects"],
)
@pytest.mark.parametrize("path", ["/prompt", "/download", "/interrupt"])
def test_a_body_nested_too_deeply_to_parse_is_a_400_at_body(server: ApiServer, path: str, body: bytes) -> None:
    assert len(body) < 2 * 1024 * 1024
    response = server.http.post(path, content=body, headers=JSON)

    assert response.status_code == 400, response.text
    assert_json_error(dict(response.headers), response.json())
    kind = "object" if body.startswith(b'{"a"') else "array"
    assert response.json() == {
        "error": f"Malformed JSON body: maximum recursion depth exceeded while decoding a JSON {kind} from a unicode "
        "string",
        "location": "body",
    }
    assert server.comfy_queue() == ([], [])
