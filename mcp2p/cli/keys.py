"""``mcp2p keys publish|lookup|revoke``: this node's key record on the key servers (HKP)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mcp2p.cli.exits import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, CliError
from mcp2p.cli.run import _react
from mcp2p.config import Config


def cmd_keys(config: Config, args: argparse.Namespace) -> int:
    """``mcp2p keys publish|lookup|revoke``: talk HKP to ``[keys] servers``."""
    import time

    from mcp2p.trust import keyclient, records

    client_servers = config.keys.servers
    if not client_servers:
        raise CliError("no key server configured: set [keys] servers = ADDRESS[:PORT]", EXIT_USAGE)
    result: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        client = keyclient.client_for(config.keys, reactor)
        try:
            if args.action == "lookup":
                answer = await client.fetch(args.node_id)
                result["answer"] = answer
            else:
                result["posted"] = await client.publish(result["record"])
        except keyclient.LookupFailed as e:
            result["failed"] = str(e)

    if args.action in ("publish", "revoke"):
        from mcp2p.trust.keys import KEY_FILE, load_or_create

        key_file = config.node.state_dir / KEY_FILE
        if not key_file.exists():
            raise CliError(f"no node key at {key_file}: start the daemon once to make it", 1)
        try:
            identity = load_or_create(config.node.state_dir)
        except (OSError, ValueError) as e:
            raise CliError(f"cannot read {key_file}: {e}", EXIT_FAILED) from None
        now = int(time.time())
        try:
            if args.action == "revoke":
                result["record"] = records.make_revocation(identity, now)
            else:
                result["record"] = records.make_record(
                    identity, now, lifetime=int(args.days * 86400), labels=args.label
                )
        except ValueError as e:
            raise CliError(f"cannot make the record: {e}", EXIT_USAGE) from None
    _react(run)
    if "failed" in result:
        raise CliError(f"no key server answered: {result['failed']}", EXIT_FAILED)
    if args.action == "lookup":
        answer = result["answer"]
        record = answer.record
        if record is None:
            print(f"no record for {args.node_id.hex()} (server {answer.server or '?'})")
            return EXIT_NOT_FOUND
        state = "valid"
        if record.revoked or record.expired(time.time()):
            state = "revoked" if record.revoked else "expired"
        print(
            json.dumps(
                {
                    "node_id": record.node_id.hex(),
                    "key": record.public_key.hex(),
                    "labels": list(record.labels),
                    "issued": record.issued,
                    "expires": record.expires,
                    "state": state,
                    "server": answer.server,
                    "endpoint": str(answer.endpoint),
                },
                indent=2,
            )
        )
        return EXIT_OK if state == "valid" else EXIT_NOT_FOUND
    endpoint, code, text = result["posted"]
    if code != 200:
        raise CliError(f"{endpoint} refused the record (HTTP {code}): {text}", EXIT_FAILED)
    print(f"{endpoint}: {text}")
    return EXIT_OK
