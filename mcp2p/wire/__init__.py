"""Pure wire formats: frozen dataclasses and encode/decode, no Twisted, no I/O."""
