"""``mcp2p trust list|add|remove|show``: the state directory's known_nodes."""

from __future__ import annotations

import argparse
import json
import sys

from mcp2p.cli.exits import (
    EXIT_AMBIGUOUS,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
)
from mcp2p.config import Config
from mcp2p.core.display import display_text


def _when(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def cmd_trust(config: Config, args: argparse.Namespace) -> int:
    """``mcp2p trust list|add|remove|show``: STATE/known_nodes, edited in place
    (a running daemon reads it again at its next decision)."""
    import time

    from mcp2p.trust.known import KnownNodes, entry_to_json
    from mcp2p.trust.policy import KnownError, forget, remember

    known = KnownNodes(config.node.state_dir)
    policy = config.trust.policy
    if args.action == "show" and args.node is None:
        from mcp2p.trust.keys import load_or_create

        identity = load_or_create(config.node.state_dir)
        node, key = identity.node_id.hex(), identity.public_key.hex()
        print(json.dumps({"node_id": node, "key": key}, indent=2))
        print(f"on another node: mcp2p trust add {node} {key}", file=sys.stderr)
        return EXIT_OK
    try:
        state, bad = known.read()
        if bad:
            print(f"mcp2p: {known.path}: {bad} lines skipped (not entries)", file=sys.stderr)
        if args.action == "list":
            nodes = sorted(state.nodes.values(), key=lambda n: (n.first_seen, n.node_id))
            if args.json:
                for n in nodes:
                    print(json.dumps(entry_to_json(n)))
                return EXIT_OK
            print(f"# {known.path}: {len(nodes)} nodes, [trust] policy = {policy}")
            for n in nodes:
                print(
                    f"{n.node_id.hex()}  {n.origin:<8}  {_when(n.first_seen)}  "
                    f"{n.address or '-':<21}  {display_text(n.label) or '-'}  "
                    f"{len(n.names)} names"
                )
            return EXIT_OK
        if args.action == "add":
            from mcp2p.trust.keys import node_id_of

            if node_id_of(args.key) != args.node_id:
                raise CliError(
                    f"that key's node id is {node_id_of(args.key).hex()}, not "
                    f"{args.node_id.hex()}: check both (mcp2p trust show prints a node's own)",
                    EXIT_USAGE,
                )
            now = time.time()
            known.update(
                lambda st: remember(
                    st,
                    args.node_id,
                    args.key,
                    now,
                    address=args.address or "",
                    label=args.label,
                    origin="operator",
                )
            )
            print(f"trusted {args.node_id.hex()} ({known.path}, [trust] policy = {policy})")
            return EXIT_OK
        matches = state.find(args.node)
        if not matches:
            print(f"mcp2p: no known node {args.node!r} in {known.path}", file=sys.stderr)
            return EXIT_NOT_FOUND
        if len(matches) > 1:
            print(f"mcp2p: {args.node!r} names {len(matches)} known nodes:", file=sys.stderr)
            for n in matches:
                print(f"  {n.node_id.hex()}  {display_text(n.label)}", file=sys.stderr)
            return EXIT_AMBIGUOUS
        [entry] = matches
        if args.action == "remove":
            known.update(lambda st: forget(st, entry.node_id))
            print(f"removed {entry.node_id.hex()} from {known.path}")
            return EXIT_OK
        shown = entry_to_json(entry)
        shown["first_seen_at"], shown["last_seen_at"] = (
            _when(entry.first_seen),
            _when(entry.last_seen),
        )
        print(json.dumps(shown, indent=2))
        return EXIT_OK
    except KnownError as e:
        raise CliError(str(e), EXIT_FAILED) from None
