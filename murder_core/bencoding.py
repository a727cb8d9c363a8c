"""The one place that imports bencodepy.

bencodepy raises its own exception types (and, on some hostile inputs, plain
Python ones); we turn all of them into ``BencodeError`` so callers deal with one
error tree, and we cap the input size before parsing anything.
"""

from __future__ import annotations

from typing import Any

import bencodepy

from .errors import BencodeError

#: Refuse to parse more than this unless the caller asks for a different cap.
DEFAULT_MAX_SIZE = 16 * 1024 * 1024
#: Nesting deeper than this is never legitimate in torrents or tracker replies.
MAX_DEPTH = 64

_decoder = bencodepy.BencodeDecoder(max_depth=MAX_DEPTH)


def decode(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Any:
    """Decode one complete bencoded value; trailing bytes are an error."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BencodeError(f"expected bytes to decode, got {type(data).__name__}")
    if len(data) > max_size:
        raise BencodeError(f"bencoded data is {len(data)} bytes, more than the cap of {max_size}")
    if not data:
        raise BencodeError("empty input is not a bencoded value")
    try:
        return _decoder.decode(bytes(data))
    except bencodepy.BencodeDecodeError as exc:
        raise BencodeError(f"invalid bencoding: {exc}") from None
    except (ValueError, TypeError, IndexError, KeyError, RecursionError, AttributeError) as exc:
        # bencodepy lets a few of these through on hostile input; they all mean "not bencode".
        raise BencodeError(f"invalid bencoding: {type(exc).__name__}") from None


def encode(value: Any) -> bytes:
    """Encode dicts (bytes or str keys), lists, ints, bytes and str."""
    try:
        return bytes(bencodepy.encode(value))
    except (bencodepy.BencodeEncodeError, TypeError, ValueError) as exc:
        raise BencodeError(f"cannot bencode {type(value).__name__}: {exc}") from None
