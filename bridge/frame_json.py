"""JSON-RPC frames decoded for the multiplexer and encoded again, without re-encoding bulk data.

The multiplexer rewrites a frame's envelope (``id``, the handles among ``params``/``result``
members) and never looks inside bulk data: an ``fs/readFile`` result's ``dataBase64`` is 11 MB of
text for 8 MiB. So an executor's large frame is decoded two levels deep only: the envelope and the
members of its ``params``/``result`` object are parsed, and a bulk member there (``dataBase64``,
``chunk``) over ``RAW_STRING_CHARS`` is kept as its JSON text (``RawJSON``), which ``encode``
writes back as it is. Any other string is decoded, however long: the multiplexer reads handles
(a client may name a process with 40 K characters) and error messages. Measured on an 8 MiB
read: decoding 7.7 ms and encoding 7.6 ms become a search for the string's closing quote and one
copy.

Only executor frames are decoded so: exec-server writes them with a JSON serialiser. A client's
frame is decoded in full (checked), so nothing malformed inside a string is ever passed on to
the executor every client shares.
"""

from __future__ import annotations

import itertools
import json
import json.decoder
import re
import secrets
from collections.abc import Callable
from typing import Any

import orjson

# Frames shorter than this are decoded in full, and bulk strings this long are kept raw. Measured
# (decode + encode, a frame with one base64 string): 22 K characters cost 21 µs either way; at
# 44 K full 42 µs, lazy 22 µs; at 175 K 150 µs and 32 µs. The lazy parser's own cost (~18 µs,
# in Python) makes a full decode faster below that: exec-server's process/output frames are 11 K.
LAZY_FRAME_CHARS = 32 * 1024
RAW_STRING_CHARS = LAZY_FRAME_CHARS
# The members that hold bulk data (base64): an fs/readFile result's, a process/output's.
_BULK_KEYS = frozenset({"dataBase64", "chunk"})
_BULK_NAMES = tuple(f'"{key}"' for key in sorted(_BULK_KEYS))
# How far into a long frame a bulk member's name is looked for: exec-server writes the envelope
# and a member's other fields (a client's 40 K-character process id among them) before the bulk.
# Looking through all of an 8 MiB read's 11 MB for a name it does not hold took 5 ms. A frame
# whose bulk member starts later is decoded in full: the same value, only slower.
_BULK_WINDOW = 64 * 1024

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


class RawJSON:
    """A JSON value kept as its encoded text (a long string: quotes and escapes included). Not a
    dataclass: orjson would write a dataclass as an object of its fields."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawJSON) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"RawJSON({len(self.text)} chars)"


def decode(text: str) -> Any:
    """A frame as the multiplexer takes it; ``None`` if it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # nested past Python's recursion limit: not ours to parse
        return None


def decode_executor_frame(text: str) -> Any:
    """An executor's frame, its bulk strings kept as ``RawJSON``; ``None`` if it is not JSON.

    A short one, or a long one with no bulk member to keep, is read by orjson (an 11 K
    process/output frame: 3.8 µs, the standard library 10 µs; a 188 K directory listing, decoded
    and encoded again: 1.1 ms, lazily 2.2 ms), which reads an integer past 64 bits as a float:
    exec-server (serde_json) writes none, its integers are Rust's 64-bit ones. What orjson
    refuses (NaN, a lone surrogate) gets the standard library's answer."""
    if len(text) < LAZY_FRAME_CHARS or all(text.find(name, 0, _BULK_WINDOW) == -1 for name in _BULK_NAMES):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return decode(text)
    try:
        value, end = _object(text, _skip(text, 0), depth=2)
        if _skip(text, end) != len(text):
            return None
    except (ValueError, IndexError, RecursionError):
        return None
    return value


def encode(message: Any) -> str:
    """``message`` as a frame; ``ValueError`` if it is nested too deep to write: a client's
    request (the standard library reads more levels than this writes), or an executor's frame
    (orjson reads up to 1024 levels).

    A ``RawJSON`` is written as a placeholder string and its text joined in after: the bulk is
    copied once, into the frame, instead of into orjson's bytes and again into a str."""
    raw: list[str] = []

    def placeholder(value: Any) -> str:
        if isinstance(value, RawJSON):
            raw.append(value.text)
            return _SLOT
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    try:
        text = orjson.dumps(message, default=placeholder).decode()
    except TypeError:
        pass  # integers beyond 64 bits, or nested past orjson's 254 levels: the standard library
    else:
        if not raw:
            return text
        parts = text.split(_SLOT_JSON)
        if len(parts) == len(raw) + 1:
            return "".join(itertools.chain.from_iterable(zip(parts, [*raw, ""], strict=True)))
    try:
        return json.dumps(_materialised(message), separators=(",", ":"))
    except RecursionError:
        raise ValueError("nested too deep to write") from None


_COUNTED_BELOW = 4096


def nested_deeper_than(limit: int, text: str, value: Any) -> bool:
    """Whether ``value`` (written as ``text``) nests objects and arrays more than ``limit`` levels
    deep, the frame's own object being the first. A short frame with no more than ``limit``
    brackets (those in strings too) is not walked; a long one is (counting the brackets of an
    11 MB write takes longer than walking its three objects)."""
    if len(text) < _COUNTED_BELOW and text.count("{") + text.count("[") <= limit:
        return False

    def deeper(item: Any, room: int) -> bool:
        if isinstance(item, dict):
            return room == 0 or any(deeper(child, room - 1) for child in item.values())
        if isinstance(item, list):
            return room == 0 or any(deeper(child, room - 1) for child in item)
        return False

    return deeper(value, limit)


# Written by orjson as it is (no escapes); the random part keeps it out of any frame's own text.
_SLOT = f"\ue000codexgw-raw-{secrets.token_hex(8)}\ue000"
_SLOT_JSON = f'"{_SLOT}"'


def _materialised(value: Any) -> Any:
    if isinstance(value, RawJSON):
        return json.loads(value.text)
    if isinstance(value, dict):
        return {key: _materialised(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_materialised(item) for item in value]
    return value


def _skip(text: str, index: int) -> int:
    match = _WHITESPACE.match(text, index)
    assert match is not None  # matches the empty string
    return match.end()


def _object(text: str, index: int, depth: int, bulk: bool = False) -> tuple[Any, int]:
    """The value at ``index`` (an object decoded ``depth`` levels deep) and where it ends; a long
    string is kept raw if it is ``bulk``."""
    if text[index] != "{" or depth == 0:
        if text[index] == '"' and bulk:
            return _string(text, index)
        value, end = _DECODER.raw_decode(text, index)
        return value, end
    result: dict[str, Any] = {}
    index = _skip(text, index + 1)
    if text[index] == "}":
        return result, index + 1
    while True:
        if text[index] != '"':
            raise ValueError("object key expected")
        key, index = _scanstring(text, index + 1)
        index = _skip(text, index)
        if text[index] != ":":
            raise ValueError("':' expected")
        result[key], index = _object(text, _skip(text, index + 1), depth - 1, key in _BULK_KEYS)
        index = _skip(text, index)
        if text[index] == "}":
            return result, index + 1
        if text[index] != ",":
            raise ValueError("',' or '}' expected")
        index = _skip(text, index + 1)


def _string(text: str, start: int) -> tuple[Any, int]:
    """A bulk string: decoded if short, else kept as its text up to its closing quote."""
    end = text.find('"', start + 1)
    while end != -1 and _escaped(text, end):
        end = text.find('"', end + 1)
    if end == -1:
        raise ValueError("unterminated string")
    if end - start < RAW_STRING_CHARS:
        return _scanstring(text, start + 1)
    return RawJSON(text[start : end + 1]), end + 1


def _escaped(text: str, quote: int) -> bool:
    """Whether the quote at ``quote`` is preceded by an odd number of backslashes."""
    backslashes = 0
    while text[quote - 1 - backslashes] == "\\":
        backslashes += 1
    return backslashes % 2 == 1
