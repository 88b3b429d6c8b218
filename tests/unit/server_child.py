"""A Runner (comfyui_api/server.py) around a tiny ASGI app, for tests/unit/test_server_signals.py.

    python tests/unit/server_child.py PORT

Startup waits for a line on stdin (`fail` makes it fail as ComfyUI's would); the drain waits for another. The app
answers 200, or 503 while draining; `GET /exit` asks the run to exit with code 1; `GET /sigterm-handler` names the
Python-level SIGTERM handler in place while serving. Events are JSON lines on stdout, beside the server's own JSON
log.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import uvicorn

from comfyui_api.errors import StartupError
from comfyui_api.logs import configure_logging
from comfyui_api.server import Runner, UvicornWithoutSignals


def event(name: str) -> None:
    print(json.dumps({"event": name}), flush=True)


async def main(port: int) -> int:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    draining = False

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        if scope["path"] == "/exit":
            runner.request_exit(1)
        elif scope["path"] == "/sigterm-handler":
            handler = signal.getsignal(signal.SIGTERM)
            body = getattr(handler, "__qualname__", repr(handler)).encode()
        await send({"type": "http.response.start", "status": 503 if draining else 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def start() -> None:
        event("starting")
        if (await stdin.readline()).strip() == b"fail":
            raise StartupError("ComfyUI did not answer")

    async def drain() -> None:
        nonlocal draining
        draining = True
        event("draining")
        await stdin.readline()

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    runner = Runner(UvicornWithoutSignals(config), drain)
    with runner.signals():
        code = await runner.run(start)
    event(f"exit {code}")
    return code


if __name__ == "__main__":
    configure_logging("info")
    sys.exit(asyncio.run(main(int(sys.argv[1]))))
