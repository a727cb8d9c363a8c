"""murder: fast BitTorrent-powered deploys.

The engine: torrent creation and validation, an HTTP tracker, and a peer-wire
client with seed and peer modes. Pure Python so it ships as one zipapp.
"""

__version__ = "0.1.0"
