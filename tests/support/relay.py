"""A TCP relay between our server and ComfyUI that a test can use to cut the websocket."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from .server import free_port


class Relay:
    """Forwards 127.0.0.1:<port> to a target port; websocket connections can be cut and refused."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target_port = target_port
        self._websockets: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._block_websockets = False
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self._ready.set()
            await self._server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(main())
        # Let the cancelled connection handlers finish, then free the loop.
        pending = asyncio.all_tasks(self._loop)
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.read(65536)
        is_websocket = head.startswith(b"GET /ws")
        if is_websocket and self._block_websockets:
            writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            writer.close()
            return
        pair = (writer, upstream_writer)
        if is_websocket:
            self._websockets.add(pair)
        upstream_writer.write(head)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._websockets.discard(pair)

    def cut_websockets(self, *, block: bool) -> None:
        """Drop every open websocket at once (no close frame); with `block`, refuse new ones too."""

        def cut() -> None:
            self._block_websockets = block
            for client_side, comfy_side in list(self._websockets):
                client_side.transport.abort()
                comfy_side.transport.abort()

        self._loop.call_soon_threadsafe(cut)

    def allow_websockets(self) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "_block_websockets", False)

    @property
    def open_websockets(self) -> int:
        return len(self._websockets)

    def close(self) -> None:
        def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(10)
