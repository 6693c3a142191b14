"""Pure logic: state machines and arithmetic, no Twisted, no I/O."""
