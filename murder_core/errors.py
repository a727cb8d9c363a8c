"""One error tree for the whole of murder.

Callers catch ``MurderError`` to handle anything murder raises on purpose; anything
else escaping is a bug. Each error keeps the offending value so messages can say
exactly what was wrong and where.
"""

from __future__ import annotations

from typing import Any


class MurderError(Exception):
    """Root of every error murder raises deliberately."""

    exit_code = 1


class BencodeError(MurderError):
    """Bytes that are not valid bencoding (or exceed our caps)."""

    exit_code = 3


class MetainfoError(MurderError):
    """A .torrent that is malformed, hostile or inconsistent.

    ``key`` names the offending field (dotted, e.g. ``info.piece length``) and
    ``value`` holds what we found there.
    """

    exit_code = 3

    def __init__(self, message: str, *, key: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.key = key
        self.value = value


class ProtocolError(MurderError):
    """A peer-wire protocol violation."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The remote peer sent something the protocol forbids; drop it."""


class PieceHashError(MurderError):
    """A piece whose SHA-1 does not match the metainfo."""

    def __init__(self, index: int) -> None:
        super().__init__(f"piece {index} failed its SHA-1 check")
        self.index = index


class StorageError(MurderError):
    """Reading or writing the payload on disk failed (missing file, no space, ...)."""

    exit_code = 3


class UnpackMapError(MurderError):
    """An ``--unpack-map`` that is malformed, does not fit the torrent, or names unsafe paths."""

    exit_code = 3


class PayloadMismatchError(StorageError):
    """A seeder's payload fails the torrent's hashes: it must not serve it at all."""


class TrackerError(MurderError):
    """The tracker refused us, answered garbage, or could not be reached."""

    exit_code = 4


class TrackerBusyError(TrackerError):
    """The tracker accepted our connection but did not answer in time: it is there, busy."""


class TrackerRequestError(TrackerError):
    """A malformed or hostile request sent to our tracker; it answers HTTP 400.

    ``param`` names the offending query parameter (``None`` when the request as a
    whole is at fault) and ``value`` holds what we got.
    """

    def __init__(self, message: str, *, param: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.param = param
        self.value = value


class DownloadError(MurderError):
    """A download could not complete (timeout, no peers, interrupted)."""


class LeaseError(MurderError):
    """A service told to hold a lease was started without a live one."""

    exit_code = 2


class DeployError(MurderError):
    """A deploy step failed on one or more hosts."""


class InventoryError(DeployError):
    """A malformed inventory file; the message names the line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = f"{path}:{line}: " if path is not None and line is not None else ""
        super().__init__(where + message)
        self.path = path
        self.line = line


class ClusterError(MurderError):
    """The local dev cluster (murder_dev.cluster) could not be built, reached or removed."""


class HostError(DeployError):
    """A deploy step failed on one host; ``host`` names it, ``reason`` says what happened."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason
