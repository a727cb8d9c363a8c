"""Small value types, so hashes, ids and addresses are never bare bytes or tuples."""

from __future__ import annotations

import ipaddress

from .records import record


@record
class InfoHash:
    """SHA-1 of the bencoded info dictionary: the identity of a torrent."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 20:
            raise ValueError(f"info_hash must be 20 bytes, got {len(self.raw)}")

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @classmethod
    def from_hex(cls, text: str) -> InfoHash:
        return cls(bytes.fromhex(text))

    def __str__(self) -> str:
        return self.hex


@record
class PeerId:
    """The 20-byte id a client announces and sends in its handshake."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 20:
            raise ValueError(f"peer_id must be 20 bytes, got {len(self.raw)}")

    @property
    def hex(self) -> str:
        return self.raw.hex()

    def __str__(self) -> str:
        return self.raw.hex()


@record(order=True)
class PeerAddr:
    """An IPv4 or IPv6 address and TCP port of a peer."""

    ip: str
    port: int

    def __post_init__(self) -> None:
        ipaddress.ip_address(self.ip)  # raises ValueError on garbage
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"
