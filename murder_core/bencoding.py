"""The one place that imports bencodepy.

bencodepy is lenient where it must not be: it parses integers and string lengths
with ``int()`` (so ``i 5e``, ``i+5e`` and ``i1_0e`` decode), keeps the last of
duplicate dict keys, and a negative length on a dict key (``d1:a3:xyz-8:``)
sends it back to an earlier offset and into an endless loop. So every input is
first walked by a strict, non-recursive scanner that enforces the canonical
grammar of BEP 3 and the caps below; bencodepy only builds values from bytes
the scanner accepted. Its errors (and, on hostile input, plain Python ones)
become ``BencodeError`` so callers deal with one error tree.

The scanner also reports where each value of a top-level dict lies in the
input, which is how the info_hash is taken over the exact bytes of ``info``.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import bencodepy

from .errors import BencodeError

#: Refuse to parse more than this unless the caller asks for a different cap.
DEFAULT_MAX_SIZE = 16 * 1024 * 1024
#: Nesting deeper than this is never legitimate in torrents or tracker replies.
MAX_DEPTH = 64
#: Integers and string lengths longer than this many digits are refused
#: (torrent lengths fit in 20 digits; this keeps int() away from huge inputs).
MAX_INT_DIGITS = 32

#: (start, end) offsets of a value inside the input, end exclusive.
Span = tuple[int, int]

_decoder = bencodepy.BencodeDecoder(max_depth=MAX_DEPTH + 1)

_INT = re.compile(rb"i(0|-?[1-9][0-9]{0,%d})e" % (MAX_INT_DIGITS - 1))
_STRING_LENGTH = re.compile(rb"(0|[1-9][0-9]{0,%d}):" % (MAX_INT_DIGITS - 1))
_DIGITS = frozenset(b"0123456789")
_INT_START, _LIST_START, _DICT_START, _END = b"i"[0], b"l"[0], b"d"[0], b"e"[0]


def _invalid(problem: str) -> BencodeError:
    return BencodeError(f"invalid bencoding: {problem}")


class _Container:
    """An open list or dict while scanning; dicts remember keys to refuse duplicates."""

    __slots__ = ("key", "keys")

    def __init__(self, is_dict: bool) -> None:
        self.keys: Optional[set[bytes]] = set() if is_dict else None
        self.key: Optional[bytes] = None  # a dict key still waiting for its value


def _string_span(data: bytes, pos: int) -> Span:
    """Offsets of the payload of the byte string starting at ``pos``."""
    match = _STRING_LENGTH.match(data, pos)
    if match is None:
        raise _invalid(f"malformed string length at byte {pos}")
    start = match.end()
    length = int(match.group(1))
    if length > len(data) - start:
        raise _invalid(
            f"string at byte {pos} claims {length} bytes but only {len(data) - start} remain"
        )
    return start, start + length


def _int_end(data: bytes, pos: int) -> int:
    match = _INT.match(data, pos)
    if match is None:
        raise _invalid(f"malformed integer at byte {pos}")
    return match.end()


def _scan(data: bytes) -> dict[bytes, Span]:
    """Check ``data`` is exactly one well-formed value; return top-level dict value spans."""
    stack: list[_Container] = []
    spans: dict[bytes, Span] = {}
    value_start = 0
    pos = 0
    size = len(data)
    while True:
        if pos >= size:
            raise _invalid(f"truncated: input ends at byte {pos} inside a value")
        char = data[pos]
        top = stack[-1] if stack else None
        if top is not None and top.key is None and char == _END:
            stack.pop()
            pos += 1
        elif top is not None and top.keys is not None and top.key is None:
            if char not in _DIGITS:
                raise _invalid(f"dict key at byte {pos} is not a byte string")
            key_pos = pos
            start, pos = _string_span(data, pos)
            key = data[start:pos]
            if key in top.keys:
                raise _invalid(f"duplicate dict key {key[:64]!r} at byte {key_pos}")
            top.keys.add(key)
            top.key = key
            if len(stack) == 1:
                value_start = pos
            continue
        elif char == _INT_START:
            pos = _int_end(data, pos)
        elif char in _DIGITS:
            pos = _string_span(data, pos)[1]
        elif char in (_LIST_START, _DICT_START):
            if len(stack) >= MAX_DEPTH:
                raise _invalid(f"nesting deeper than {MAX_DEPTH} levels at byte {pos}")
            stack.append(_Container(char == _DICT_START))
            pos += 1
            continue
        elif top is not None and top.key is not None and char == _END:
            raise _invalid(f"dict key {top.key!r} has no value at byte {pos}")
        else:
            raise _invalid(f"unexpected byte {bytes([char])!r} at byte {pos}")
        # A complete value ends at pos; it belongs to the container on top, if any.
        if not stack:
            break
        parent = stack[-1]
        if parent.key is not None:
            if len(stack) == 1:
                spans[parent.key] = (value_start, pos)
            parent.key = None
    if pos != size:
        raise _invalid(f"trailing data after the value ending at byte {pos}")
    return spans


def decode_with_spans(
    data: bytes, *, max_size: int = DEFAULT_MAX_SIZE
) -> tuple[Any, dict[bytes, Span]]:
    """Decode like ``decode``; also return where each value of a top-level dict lies.

    The spans map each key of the top-level dict to the (start, end) offsets of its
    bencoded value in ``data``; it is empty when the value is not a dict. Dict keys
    need not be sorted (not every encoder sorts them), but duplicates are refused.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BencodeError(f"expected bytes to decode, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > max_size:
        raise BencodeError(f"bencoded data is {len(raw)} bytes, more than the cap of {max_size}")
    if not raw:
        raise BencodeError("empty input is not a bencoded value")
    spans = _scan(raw)
    try:
        return _decoder.decode(raw), spans
    except bencodepy.BencodeDecodeError as exc:
        raise BencodeError(f"invalid bencoding: {exc}") from None
    except (ValueError, TypeError, IndexError, KeyError, RecursionError, AttributeError) as exc:
        # bencodepy lets a few of these through on hostile input; they all mean "not bencode".
        raise BencodeError(f"invalid bencoding: {type(exc).__name__}") from None


def decode(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Any:
    """Decode one complete bencoded value; trailing bytes are an error."""
    return decode_with_spans(data, max_size=max_size)[0]


def encode(value: Any) -> bytes:
    """Encode dicts (bytes or str keys, sorted on output), lists, tuples, ints, bytes and str."""
    try:
        return bytes(bencodepy.encode(value))
    except KeyError as exc:
        # bencodepy looks encoders up by exact type, so an unsupported one is a KeyError.
        bad = exc.args[0].__name__ if exc.args and isinstance(exc.args[0], type) else exc
        message = f"cannot bencode {type(value).__name__}: unsupported type {bad}"
        raise BencodeError(message) from None
    except (TypeError, ValueError) as exc:
        raise BencodeError(f"cannot bencode {type(value).__name__}: {exc}") from None
