"""Pure logic: state machines and arithmetic, no Twisted, no I/O.

Built on ``mcp2p.wire`` (the messages it decides about); never imported by it.
"""
