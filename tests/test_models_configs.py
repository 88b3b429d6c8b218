"""GET /models lists ComfyUI's `configs` folder like the other model folders, as the reference does (and leaves
`custom_nodes` out, as the reference's answer does)."""

from __future__ import annotations

from tests.support.server import ApiServer


def test_models_lists_configs(server: ApiServer) -> None:
    (server.base / "models" / "configs").mkdir(parents=True, exist_ok=True)
    (server.base / "models" / "configs" / "listed-config.yaml").write_text("model: {}\n")
    models = server.http.get("/models").json()
    assert "listed-config.yaml" in models["configs"]
    assert "custom_nodes" not in models
