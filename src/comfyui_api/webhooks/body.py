"""JSON bodies of any size in bounded memory: output files as base64 read from disk, long strings escaped a slice at
a time.

A webhook or a /prompt response carries every output file base64-encoded and echoes the prompt, whose strings may be
tens of MB. `json.dumps` would hold the whole text, then its UTF-8 bytes, then (to sign it) a copy of those; a
`JsonBody` is written out chunk by chunk instead, as often as needed (once to sign it, once per attempt to send it).

Its bytes are what the reference's `JSON.stringify` writes, so that a receiver in JavaScript that verifies the
signature over `JSON.stringify(JSON.parse(body))` gets the very bytes that were signed: each object's keys in
JavaScript's order (array indices such as "2" and "10" first, ascending, then the others as inserted; a graph's node
ids and `stats.comfy_execution.nodes` are not in that order), and floats as JavaScript prints them (1 rather than
1.0, 0.00001 rather than 1e-05, null for NaN and infinities). Those aside, they are `json.dumps(value,
separators=(",", ":"), ensure_ascii=False)`'s, each `Base64File` standing for the string of its file's base64;
its escaping is JSON.stringify's for any text UTF-8 can hold. An integer beyond 2^53 is written exactly, as Python
holds it (JavaScript would round it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Bodies of about this size or less are written in one piece, by json.dumps (faster than a walk, and no thread hops).
INLINE_LIMIT = 1024 * 1024
# What an object or an array counts for in that size, beyond its text: encode() walks each in Python before json.dumps
# writes it, about a microsecond each, the time json.dumps takes to write some 40 characters. So the slowest small
# body (thousands of tiny objects) takes about as long to write at once as the slowest one did without that walk.
_WALK_WEIGHT = 40
# Read in multiples of 3 bytes, so each chunk's base64 has no padding and chunks concatenate.
_READ_CHUNK = 3 * 1024 * 1024
# Strings longer than this (characters) are escaped a slice at a time: JSON escapes each character on its own.
_SLICE = 1024 * 1024
# Small pieces of text are gathered into chunks of about this many characters before they are encoded.
_CHUNK_CHARS = 64 * 1024

_SEPARATORS = (",", ":")
# The C escaper json.dumps itself uses with ensure_ascii=False: quotes included.
_escape = json.encoder.encode_basestring
# Integers, booleans and null exactly as json.dumps writes them (which is how JSON.stringify writes them too).
_scalar = json.JSONEncoder(ensure_ascii=False, separators=_SEPARATORS).encode
# The largest array index, 2^32 - 2: JavaScript lists the keys that are array indices before an object's other keys.
_MAX_INDEX = 2**32 - 2
_MAX_INDEX_DIGITS = len(str(_MAX_INDEX))
# JavaScript writes a number without an exponent when 1e-6 <= |x| < 1e21; Python's repr when 1e-4 <= |x| < 1e16.
_JS_PLAIN_POWERS = range(-6, 21)
# Values that json.dumps writes as JavaScript does, and that hold nothing to reorder.
_AS_JS = frozenset({str, int, bool, type(None)})


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
        nothing encoded, and the count stops as soon as it is over (cheap for a large body too). Objects, arrays and
        floats count for more than their text: encode() walks them in Python (to put them in JavaScript's order), so
        a body of many small ones is slower to write at once than its size says."""
        return _rough_size(self.value, INLINE_LIMIT) <= INLINE_LIMIT

    def encode(self) -> bytes:
        """The whole body at once (for a small one: the files are read here)."""
        try:
            value = _js_value(self.value)
        except _NotPlain:
            # Rare (a float below 1e-4 in the prompt): the walk writes it as JavaScript does, and writes the rest alike.
            return b"".join(self.chunks())
        return json.dumps(value, separators=_SEPARATORS, ensure_ascii=False, default=_inline).encode()

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


class _NotPlain(Exception):
    """A float that json.dumps cannot be made to write as JavaScript does."""


def _js_value(value: Any) -> Any:
    """`value` as json.dumps must see it to write JavaScript's bytes: dicts in JavaScript's key order and floats that
    JavaScript prints otherwise replaced (1.0 by 1, NaN by None). Only what changes is copied: a body already in that
    order is returned as it is. Raises _NotPlain for a float json.dumps cannot write JavaScript's way (1e-05)."""
    if isinstance(value, dict):
        replaced: dict[Any, Any] = {}
        for key, member in value.items():
            # Not a call per string or integer: this walk is most of what encode() costs.
            if type(member) not in _AS_JS and (written := _js_value(member)) is not member:
                replaced[key] = written
        order = _js_order(value)
        if order is None and not replaced:
            return value
        return {key: replaced[key] if key in replaced else value[key] for key in (value if order is None else order)}
    if isinstance(value, list | tuple):
        elements = [member if type(member) in _AS_JS else _js_value(member) for member in value]
        return elements if any(new is not old for new, old in zip(elements, value, strict=True)) else value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < 1e21:
            return int(_js_float(value))  # json.dumps writes the int as JavaScript writes the float
        # Other floats of 1e-4 or more are written alike by both (repr's exponent starts at 1e16, all integers).
        if abs(value) < 1e-4 and _js_float(value) != float.__repr__(value):
            raise _NotPlain
    return value


def _js_items(mapping: dict[Any, Any]) -> Iterable[tuple[Any, Any]]:
    """`mapping`'s items in the order JavaScript lists an object's keys."""
    order = _js_order(mapping)
    return mapping.items() if order is None else [(key, mapping[key]) for key in order]


def _js_order(mapping: dict[Any, Any]) -> list[Any] | None:
    """`mapping`'s keys in the order JavaScript lists an object's keys (OrdinaryOwnPropertyKeys): those that are array
    indices first, ascending, then the others in insertion order. None when that is their order already (the common
    case: no index keys, or only index keys inserted in ascending order)."""
    indices: list[tuple[int, Any]] = []
    others: list[Any] = []
    in_order = True
    for key in mapping:
        text = key if isinstance(key, str) else _key(key)
        # isdigit() first: most keys are names, and a call per key is most of what this costs.
        if text.isdigit() and _is_index(text):
            index = int(text)
            in_order = in_order and not others and (not indices or indices[-1][0] <= index)
            indices.append((index, key))
        else:
            others.append(key)
    if in_order:
        return None
    # Stable: two keys that are written alike (1 and "1") keep their order, as json.dumps writes both.
    indices.sort(key=lambda pair: pair[0])
    return [key for _, key in indices] + others


def _is_index(key: str) -> bool:
    """Whether JavaScript takes `key` for an array index: the decimal digits of an integer 0 <= n <= 2^32 - 2,
    without leading zeros ("0" is one; "01", "-1", "1.5" and "4294967295" are not)."""
    return (
        key.isdigit()
        and key.isascii()  # isdigit() also accepts other digits: superscripts, Arabic-Indic…
        and (key[0] != "0" or len(key) == 1)
        and (len(key) < _MAX_INDEX_DIGITS or (len(key) == _MAX_INDEX_DIGITS and int(key) <= _MAX_INDEX))
    )


def _js_float(value: float) -> str:
    """`value` as JSON.stringify writes it (Number::toString): the shortest digits that read back as `value`, which
    Python's repr finds too, laid out as JavaScript does."""
    if not math.isfinite(value):
        return "null"
    if value == 0:
        return "0"  # -0.0 too
    text = float.__repr__(value)
    mantissa, exponent_mark, exponent = text.partition("e")
    if not exponent_mark:
        return text.removesuffix(".0")  # "1" rather than "1.0"
    power = int(exponent)
    if power not in _JS_PLAIN_POWERS:
        # JavaScript does not pad the exponent to two digits: 1e-7, not 1e-07.
        return f"{mantissa}e{'+' if power > 0 else '-'}{abs(power)}"
    sign, digits = ("-", mantissa[1:]) if mantissa.startswith("-") else ("", mantissa)
    digits = digits.replace(".", "")
    if power < 0:  # 1e-6 <= |x| < 1e-4
        return f"{sign}0.{'0' * (-power - 1)}{digits}"
    # 1e16 <= |x| < 1e21, an integer: its shortest digits, then zeros (not the exact digits of its binary value).
    return f"{sign}{digits}{'0' * (power + 1 - len(digits))}"


def _inline(value: Any) -> str:
    if isinstance(value, Base64File):
        return value.text()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _rough_size(value: Any, limit: int) -> int:
    """About the encoded size of `value` (at least its characters), counted until it passes `limit`; each object and
    array counted _WALK_WEIGHT characters more and each float 8 more, about what encode()'s walk of them costs."""
    total = 0
    pending = [value]
    while pending and total <= limit:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, dict):
            total += 2 + _WALK_WEIGHT
            for key, member in item.items():
                total += len(key) + 4 if isinstance(key, str) else 8
                pending.append(member)
        elif isinstance(item, list | tuple):
            total += 2 + _WALK_WEIGHT + len(item)
            pending.extend(item)
        elif isinstance(item, Base64File):
            total += item.encoded_size() + 2
        elif isinstance(item, float):
            total += 16
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
        for index, (key, member) in enumerate(_js_items(value)):
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
    elif isinstance(value, float):
        yield _js_float(value)
    elif value is None or isinstance(value, int):
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
