"""Uploads straight from the page cache to the socket, as far as the socket takes them.

A block served with pread + send crosses memory twice (page cache to our buffer, our
buffer to the socket). ``os.sendfile`` hands the socket references to the cached pages
instead. On a 16-host swarm squeezed onto two cores, every peer uploads about as much
as it downloads, so those two copies are a good part of what the box spends.

The asyncio transport knows nothing of bytes written behind its back, so this is only
safe while its own buffer is empty (nothing of ours is queued ahead) and the caller
hands whatever did not fit back to the transport at once.
"""

from __future__ import annotations

import os

#: Whether this platform can send a file's pages to a socket.
AVAILABLE = hasattr(os, "sendfile")


def send_direct(sock_fd: int, head: bytes, extents: list[tuple[int, int, int]]) -> tuple[int, int]:
    """Write ``head`` then the file ``extents`` to a non-blocking socket until it is full.

    Returns (bytes of ``head`` sent, bytes of the extents sent). The extents are only
    started once all of ``head`` is out. A full socket is not an error; any other
    OSError is the caller's (the connection is gone).
    """
    try:
        head_sent = os.write(sock_fd, head)
    except BlockingIOError:
        return 0, 0
    if head_sent < len(head):
        return head_sent, 0
    sent = 0
    for fd, offset, size in extents:
        done = 0
        while done < size:
            try:
                n = os.sendfile(sock_fd, fd, offset + done, size - done)
            except BlockingIOError:
                return head_sent, sent + done
            if n <= 0:  # the file is shorter than the torrent says: let a read report it
                return head_sent, sent + done
            done += n
        sent += size
    return head_sent, sent
