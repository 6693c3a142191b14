"""The project's exceptions: one per kind of failure a caller handles."""


class ProtocolError(ValueError):
    """Bytes from the network that are not a valid message (drop and count)."""


class ConfigError(ValueError):
    """A configuration value that is missing, unknown or out of range.

    The message is one line naming file, section, key, value and what is
    allowed, so the daemon can print it and exit.
    """
