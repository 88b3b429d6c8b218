"""JSON bodies of any size in bounded memory: output files as base64 read from disk, long strings escaped a slice at
a time.

A webhook or a /prompt response carries every output file base64-encoded and echoes the prompt, whose strings may be
tens of MB. `json.dumps` would hold the whole text, then its UTF-8 bytes, then (to sign it) a copy of those; a
`JsonBody` is written out chunk by chunk instead, as often as needed (once to sign it, once per attempt to send it).
Its bytes are exactly those of `json.dumps(value, separators=(",", ":"), ensure_ascii=False)` (what the reference's
`JSON.stringify` writes), each `Base64File` standing for the string of its file's base64.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Bodies of about this size or less are written in one piece, by json.dumps (faster than a walk, and no thread hops).
INLINE_LIMIT = 1024 * 1024
# Read in multiples of 3 bytes, so each chunk's base64 has no padding and chunks concatenate.
_READ_CHUNK = 3 * 1024 * 1024
# Strings longer than this (characters) are escaped a slice at a time: JSON escapes each character on its own.
_SLICE = 1024 * 1024
# Small pieces of text are gathered into chunks of about this many characters before they are encoded.
_CHUNK_CHARS = 64 * 1024

_SEPARATORS = (",", ":")
# The C escaper json.dumps itself uses with ensure_ascii=False: quotes included.
_escape = json.encoder.encode_basestring
# Numbers, booleans and null exactly as json.dumps writes them (NaN and Infinity included).
_scalar = json.JSONEncoder(ensure_ascii=False, separators=_SEPARATORS).encode


@dataclass(frozen=True, slots=True)
class Base64File:
    """Stands for a JSON string: the base64 of the file at `path` (without a `data:` prefix), read when written."""

    path: Path

    def encoded_size(self) -> int:
        return 4 * -(-self.path.stat().st_size // 3)

    def chunks(self) -> Iterator[bytes]:
        with open(self.path, "rb") as handle:
            while data := handle.read(_READ_CHUNK):
                yield base64.b64encode(data)

    def text(self) -> str:
        return base64.b64encode(self.path.read_bytes()).decode("ascii")


class JsonBody:
    """`value` (dicts, lists, tuples, str, numbers, bool, None and `Base64File`s) as a JSON document.

    `encode()` writes a small body at once; `chunks()` (blocking) and `stream()` (async) write any body in chunks of
    a few MiB at most, the same bytes each time while its files stay unchanged; `size()` is their total length,
    found without reading the files. A value that JSON cannot hold raises TypeError, and text that UTF-8 cannot
    encode (a lone surrogate) raises UnicodeEncodeError, as `json.dumps(...).encode()` would.
    """

    def __init__(self, value: Any) -> None:
        self.value = value

    def is_small(self) -> bool:
        """Whether the body is about INLINE_LIMIT bytes or less: characters of text and the files' base64 counted,
        nothing encoded, and the count stops as soon as it is over (cheap for a large body too)."""
        return _rough_size(self.value, INLINE_LIMIT) <= INLINE_LIMIT

    def encode(self) -> bytes:
        """The whole body at once (for a small one: the files are read here)."""
        return json.dumps(self.value, separators=_SEPARATORS, ensure_ascii=False, default=_inline).encode()

    def chunks(self) -> Iterator[bytes]:
        """The body in chunks; blocking (it reads the files)."""
        for part in _parts(self.value):
            if isinstance(part, bytes):
                yield part
            else:
                yield from part.chunks()

    def size(self) -> int:
        """The body's length in bytes; blocking (text is encoded to be counted, files are only measured)."""
        return sum(len(part) if isinstance(part, bytes) else part.encoded_size() for part in _parts(self.value))

    async def stream(self) -> AsyncIterator[bytes]:
        """`chunks()` pulled in worker threads, the next chunk made while the current one is sent."""
        chunks = self.chunks()
        # The generator is advanced and closed from worker threads: never two of them at once.
        lock = threading.Lock()

        def advance() -> bytes | None:
            with lock:
                return next(chunks, None)

        def close() -> None:
            with lock:
                chunks.close()

        loop = asyncio.get_running_loop()
        upcoming = loop.run_in_executor(None, advance)
        try:
            while (chunk := await upcoming) is not None:
                upcoming = loop.run_in_executor(None, advance)
                yield chunk
        finally:
            # The consumer stopped early: the chunk being made is not wanted (nor its failure, if it failed).
            if not upcoming.cancel() and not upcoming.cancelled():
                upcoming.exception()
            await asyncio.to_thread(close)


def _inline(value: Any) -> str:
    if isinstance(value, Base64File):
        return value.text()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _rough_size(value: Any, limit: int) -> int:
    """About the encoded size of `value` (at least its characters), counted until it passes `limit`."""
    total = 0
    pending = [value]
    while pending and total <= limit:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, dict):
            total += 2
            for key, member in item.items():
                total += len(key) + 4 if isinstance(key, str) else 8
                pending.append(member)
        elif isinstance(item, list | tuple):
            total += 2 + len(item)
            pending.extend(item)
        elif isinstance(item, Base64File):
            total += item.encoded_size() + 2
        else:
            total += 8
    return total


def _parts(value: Any) -> Iterator[bytes | Base64File]:
    """The document as UTF-8 chunks, with each Base64File in its place (its quotes are in the chunks around it)."""
    text: list[str] = []
    size = 0
    for piece in _pieces(value):
        if isinstance(piece, str):
            text.append(piece)
            size += len(piece)
            if size >= _CHUNK_CHARS:
                yield "".join(text).encode()
                text.clear()
                size = 0
        else:
            text.append('"')
            yield "".join(text).encode()
            yield piece
            text = ['"']
            size = 1
    if text:
        yield "".join(text).encode()


def _pieces(value: Any) -> Iterator[str | Base64File]:
    if isinstance(value, str):
        yield from _string(value)
    elif isinstance(value, dict):
        yield "{"
        for index, (key, member) in enumerate(value.items()):
            if index:
                yield ","
            yield from _string(key if isinstance(key, str) else _key(key))
            yield ":"
            yield from _pieces(member)
        yield "}"
    elif isinstance(value, list | tuple):
        yield "["
        for index, member in enumerate(value):
            if index:
                yield ","
            yield from _pieces(member)
        yield "]"
    elif isinstance(value, Base64File):
        yield value
    elif value is None or isinstance(value, int | float):
        yield _scalar(value)
    else:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _string(text: str) -> Iterator[str]:
    if len(text) <= _SLICE:
        yield _escape(text)
        return
    yield '"'
    for start in range(0, len(text), _SLICE):
        yield _escape(text[start : start + _SLICE])[1:-1]
    yield '"'


def _key(key: Any) -> str:
    """A non-string dict key as json.dumps writes it: numbers, booleans and None become their JSON text."""
    if key is None or isinstance(key, int | float):
        return _scalar(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")
