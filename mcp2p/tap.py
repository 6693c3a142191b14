"""``twistd mcp2p``: command-line options and the service they make."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
)
from twisted.python import usage

from mcp2p import __version__
from mcp2p.config import CONFIG_ENV, Config, find_config, load_config, parse_override
from mcp2p.errors import ConfigError

if TYPE_CHECKING:
    from mcp2p.app import INodeReactor, Node

    # A log observer, new (ILogObserver) or legacy (twisted.python.log): both
    # are called with the event.
    Observer = Callable[[LogEvent], None]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run an mcp2p node: share the configured directories, answer queries, announce "
        f"with SAP. The config is --config FILE, else ${CONFIG_ENV}, else ./mcp2p.ini, "
        "else ./etc/mcp2p.ini, else /etc/mcp2p/mcp2p.ini. Options given here override the "
        "file; every option of etc/mcp2p.ini can be set with --set SECTION.KEY=VALUE."
    )
    optParameters = [
        ["config", "c", None, "the ini file to read"],
        ["interface", "i", None, "IPv4 address of the multicast interface ([node] interface)"],
        ["state-dir", "d", None, "state directory ([node] state_dir)"],
        ["api-port", None, None, "local API port on 127.0.0.1 ([api] port)"],
        [
            "log-level",
            None,
            None,
            "lowest level written: debug, info, warn, error or critical ([node] log_level)",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.overrides: list[tuple[str, str, str]] = []
        self.shares: list[str] = []
        self.config: Config | None = None

    def opt_set(self, value: str) -> None:
        """Override one option of the ini file: SECTION.KEY=VALUE (repeatable)."""
        try:
            self.overrides.append(parse_override(value))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def opt_share(self, value: str) -> None:
        """A directory to share instead of [share] paths (repeatable)."""
        self.shares.append(value)

    def postOptions(self) -> None:
        extra = []
        if self["interface"]:
            extra.append(("node", "interface", self["interface"]))
        if self["state-dir"]:
            extra.append(("node", "state_dir", self["state-dir"]))
        if self["api-port"]:
            extra.append(("api", "port", self["api-port"]))
        if self["log-level"]:
            extra.append(("node", "log_level", self["log-level"]))
        if self.shares:
            extra.append(("share", "paths", ", ".join(self.shares)))
        try:
            self.config = load_config(find_config(self["config"]), extra + self.overrides)
        except ConfigError as e:
            # One line, no traceback, no usage text: the operator fixes the file.
            print(f"mcp2p: {e}", file=sys.stderr)
            raise SystemExit(2) from None


_log = Logger()

# Twisted's own info events for every control connection (AMP's "connection
# established/lost", a factory "Starting/Stopping factory <... at 0x...>"):
# our "control peer ... verified" line says it once, so they are written only at debug.
CHATTY_NAMESPACES = (
    "twisted.protocols.amp",
    "twisted.internet.protocol.Factory",
    "mcp2p.trust.tls.VerifyingFactory",
)


def level_filter(observer: Any, level: str) -> FilteringLogObserver:
    """``observer`` behind a filter that drops events below ``level`` (a
    ``[node] log_level`` value); legacy (twisted.python.log) observers are wrapped."""
    if not ILogObserver.providedBy(observer):
        observer = LegacyLogObserverWrapper(observer)
    lowest = LogLevel.levelWithName(level)
    predicate = LogLevelFilterPredicate(defaultLogLevel=lowest)
    if lowest == LogLevel.info:
        for namespace in CHATTY_NAMESPACES:
            predicate.setLogLevelForNamespace(namespace, LogLevel.warn)
    return FilteringLogObserver(observer, [predicate])


class Daemon(MultiService):
    """The service twistd runs; it holds the node's services.

    twistd writes its log through the Application's ``ILogObserver`` component
    when there is one (``AppLogger.start``, which runs right after this service
    is attached). Attached to the Application, this sets that component to
    twistd's own choice of observer (``--logfile``, ``--syslog``, stdout with
    ``-n``) behind the level filter. An explicit ``twistd --logger`` wins over
    the component, so it is not filtered.
    """

    def __init__(self, level: str, make_observer: Callable[[], Observer] | None) -> None:
        super().__init__()
        self.level = level
        self.make_observer = make_observer
        self.node: Node | None = None  # the record of the node's parts, from build()

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if self.make_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, level_filter(self.make_observer(), self.level))


def twistd_observer(server_options: Any) -> Callable[[], Observer] | None:
    """What twistd itself would log to, given its options (the runner's own
    logger class decides: file with rotation on SIGUSR1, syslog or stdout);
    None when not run by twistd (``twist`` filters with its own --log-level;
    a test calls makeService directly)."""
    from twisted.scripts.twistd import ServerOptions

    if not isinstance(server_options, ServerOptions):
        return None

    def make() -> Observer:
        from twisted.scripts.twistd import _SomeApplicationRunner

        return _SomeApplicationRunner.loggerFactory(server_options)._getLogObserver()

    return make


def makeService(options: Options, reactor: INodeReactor | None = None) -> Daemon:
    from mcp2p.app import build

    config = options.config
    assert config is not None
    try:
        top = build(config, reactor)
    except (ConfigError, ValueError, OSError) as e:
        print(f"mcp2p: {config.source}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    daemon = Daemon(config.node.log_level, twistd_observer(options.parent))
    top.setServiceParent(daemon)
    daemon.node = top.node
    # Logged before twistd starts its log: replayed first when it does.
    _log.info(
        "mcp2p {version} starting: node id {node_id}, config {source}",
        version=__version__,
        node_id=top.node.identity.node_id.hex(),
        source=config.source,
    )
    return daemon
