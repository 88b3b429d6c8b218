"""ComfyUI's HTTP API, as the few calls this server needs."""

from __future__ import annotations

from typing import Any

import httpx

from ..errors import ComfyUnavailable, PromptRejected
from .sanitize import scrub


class ComfyClient:
    def __init__(self, base_url: str, *, timeout_s: float = 30.0) -> None:
        # trust_env=False: the local ComfyUI must never be reached through HTTP(S)_PROXY.
        self._http = httpx.AsyncClient(
            base_url=base_url,
            trust_env=False,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ComfyUnavailable(f"ComfyUI is not reachable: {type(exc).__name__}: {exc}") from exc

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        if response.status_code != 200:
            raise ComfyUnavailable(
                f"ComfyUI answered {method} {path} with {response.status_code}: {response.text[:500]}"
            )
        return response.json() if response.content else None

    async def probe(self) -> bool:
        """True when ComfyUI answers its root page."""
        try:
            response = await self._http.get("/", timeout=5.0)
        except httpx.TransportError:
            return False
        return response.is_success

    async def queue_prompt(self, prompt: dict[str, Any], *, prompt_id: str, client_id: str) -> None:
        response = await self._request(
            "POST", "/prompt", json={"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id}
        )
        if response.status_code == 200:
            return
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code == 400 and isinstance(body, dict):
            error = body.get("error") or {}
            message = error.get("message", "ComfyUI rejected the prompt") if isinstance(error, dict) else str(error)
            details = error.get("details") if isinstance(error, dict) else None
            if details:
                message = f"{message}: {details}"
            raise PromptRejected(message, node_errors=scrub(body.get("node_errors") or {}))
        raise ComfyUnavailable(f"ComfyUI failed to queue the prompt ({response.status_code}): {response.text[:500]}")

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of one prompt, or None while ComfyUI has not written it."""
        data = await self._json("GET", f"/history/{prompt_id}")
        return data.get(prompt_id) if isinstance(data, dict) else None

    async def delete_history(self, prompt_ids: list[str]) -> None:
        await self._json("POST", "/history", json={"delete": prompt_ids})

    async def queue(self) -> tuple[set[str], set[str]]:
        """The prompt ids ComfyUI is running and the ones still pending."""
        data = await self._json("GET", "/queue")

        def ids(items: list[Any]) -> set[str]:
            return {str(item[1]) for item in items if isinstance(item, list) and len(item) > 1}

        return ids(data.get("queue_running", [])), ids(data.get("queue_pending", []))

    async def delete_from_queue(self, prompt_ids: list[str]) -> None:
        await self._json("POST", "/queue", json={"delete": prompt_ids})

    async def object_info(self, node_class: str) -> dict[str, Any]:
        data = await self._json("GET", f"/object_info/{node_class}")
        return data.get(node_class, {}) if isinstance(data, dict) else {}

    async def model_folders(self) -> list[str]:
        data = await self._json("GET", "/models")
        return [str(name) for name in data] if isinstance(data, list) else []

    async def model_files(self, folder: str) -> list[str]:
        data = await self._json("GET", f"/models/{folder}")
        return [str(name) for name in data] if isinstance(data, list) else []

    async def interrupt(self, prompt_id: str) -> None:
        await self._json("POST", "/interrupt", json={"prompt_id": prompt_id})
