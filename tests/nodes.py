"""Helpers that make real nodes (configs, files, free ports) for integration tests."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

from mcp2p.config import Config, config_from_string


def free_udp_port() -> int:
    """A port free for UDP on this host, in a range away from the defaults."""
    for _ in range(100):
        port = random.randint(20000, 60000)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("", port))
        except OSError:
            continue
        finally:
            s.close()
        return port
    raise RuntimeError("no free UDP port")


def node_ini(root: Path, query_port: int, sap_port: int, **sections: dict[str, str]) -> str:
    """An ini file for a node whose state and share live under ``root``."""
    values: dict[str, dict[str, str]] = {
        "node": {"state_dir": str(root / "state")},
        "share": {"paths": str(root / "share"), "piece_length": "64K"},
        "discovery": {"query_port": str(query_port), "ring_timeout": "0.25"},
        "sap": {"port": str(sap_port), "min_interval": "1", "group": "239.255.77.78"},
        "serving": {"control_port": "0"},
        "fetching": {"download_dirs": str(root / "downloads")},
        "api": {"port": "0"},
    }
    for name, options in sections.items():
        values.setdefault(name, {}).update(options)
    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items())
        for name, options in values.items()
    )


def make_node_dir(root: Path, files: dict[str, int | bytes]) -> Path:
    (root / "share").mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = os.urandom(content) if isinstance(content, int) else content
        (root / "share" / name).write_bytes(data)
    return root


def node_config(root: Path, query_port: int, sap_port: int, **sections: dict[str, str]) -> Config:
    return config_from_string(node_ini(root, query_port, sap_port, **sections), str(root))
