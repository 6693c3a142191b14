"""Pure wire formats: frozen dataclasses and encode/decode, no Twisted, no I/O.

The bottom of the package: it imports nothing of mcp2p but ``mcp2p.errors``.
The content id (``merkle``) and the piece and block geometry (``layout``)
live here because the manifest and the data packets are defined by them.
"""
