"""ComfyUI's HTTP API, as the few calls this server needs."""

from __future__ import annotations

from typing import Any

from ..errors import ComfyUnavailable, PromptRejected, TransportError
from .http import LocalHttp, Reply
from .sanitize import scrub

# ComfyUI answers its HTTP calls one at a time (one event loop, sharing the GIL with the prompt it runs), so a few
# calls in flight keep it busy. More would not make it faster, but would let a burst's answers pile up into one
# event-loop turn of ours: each answered history call completes a request there, and a probe waits behind them all.
_CALLS_IN_FLIGHT = 8


class ComfyClient:
    def __init__(self, base_url: str, *, timeout_s: float = 30.0) -> None:
        # Direct connections only: the local ComfyUI must never be reached through HTTP(S)_PROXY.
        self._http = LocalHttp(base_url, timeout_s=timeout_s, connect_timeout_s=5.0, max_connections=_CALLS_IN_FLIGHT)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Reply:
        try:
            return await self._http.request(method, path, **kwargs)
        except TransportError as exc:
            raise ComfyUnavailable(f"ComfyUI is not reachable: {exc}") from exc

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        if response.status != 200:
            raise ComfyUnavailable(f"ComfyUI answered {method} {path} with {response.status}: {response.text[:500]}")
        try:
            return response.json()
        except ValueError:
            raise ComfyUnavailable(
                f"ComfyUI answered {method} {path} with invalid JSON: {response.text[:200]}"
            ) from None

    async def probe(self) -> bool:
        """True when ComfyUI answers its root page."""
        try:
            response = await self._http.request("GET", "/", timeout_s=5.0)
        except TransportError:
            return False
        return response.ok

    async def queue_prompt(
        self, prompt: dict[str, Any], *, prompt_id: str, client_id: str, extra_data: dict[str, Any] | None = None
    ) -> str:
        """Queue `prompt` under `prompt_id` (with `extra_data`, such as a partner-node API key); the id ComfyUI
        echoes (an older build may choose its own)."""
        body: dict[str, Any] = {"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id}
        if extra_data:
            body["extra_data"] = extra_data
        response = await self._request("POST", "/prompt", json_body=body)
        if response.status == 200:
            try:
                echoed = response.json().get("prompt_id")
            except (ValueError, AttributeError):
                echoed = None
            # No echo at all (not seen in any build): the prompt is queued under the id we sent.
            return echoed if isinstance(echoed, str) and echoed else prompt_id
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status == 400 and isinstance(body, dict):
            error = body.get("error") or {}
            message = error.get("message", "ComfyUI rejected the prompt") if isinstance(error, dict) else str(error)
            details = error.get("details") if isinstance(error, dict) else None
            if details:
                message = f"{message}: {details}"
            raise PromptRejected(message, node_errors=scrub(body.get("node_errors") or {}))
        raise ComfyUnavailable(f"ComfyUI failed to queue the prompt ({response.status}): {response.text[:500]}")

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of one prompt, or None while ComfyUI has not written it."""
        data = await self._json("GET", f"/history/{prompt_id}")
        return data.get(prompt_id) if isinstance(data, dict) else None

    async def delete_history(self, prompt_ids: list[str]) -> None:
        await self._json("POST", "/history", json_body={"delete": prompt_ids})

    async def queue(self, *, timeout_s: float | None = None) -> tuple[set[str], set[str]]:
        """The prompt ids ComfyUI is running and the ones still pending."""
        data = await self._json("GET", "/queue", timeout_s=timeout_s)

        def ids(items: list[Any]) -> set[str]:
            return {str(item[1]) for item in items if isinstance(item, list) and len(item) > 1}

        return ids(data.get("queue_running", [])), ids(data.get("queue_pending", []))

    async def delete_from_queue(self, prompt_ids: list[str]) -> None:
        await self._json("POST", "/queue", json_body={"delete": prompt_ids})

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
        await self._json("POST", "/interrupt", json_body={"prompt_id": prompt_id})


async def take_out(client: ComfyClient, prompt_ids: list[str]) -> tuple[set[str], set[str]]:
    """Take prompts out of ComfyUI: delete them from its queue, interrupt those already running. Returns the
    prompt ids running and pending as ComfyUI answered after the delete."""
    await client.delete_from_queue(prompt_ids)
    running, pending = await client.queue()
    for prompt_id in prompt_ids:
        if prompt_id in running:
            # Only while it runs: a ComfyUI build that ignores the prompt id interrupts whatever is running.
            await client.interrupt(prompt_id)
    return running, pending
