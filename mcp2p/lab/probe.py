"""Run searches from a client-only node and print what they found and cost.

``python -m mcp2p.lab.probe --config FILE PATTERN [--repeat N]`` prints one
JSON object: every search's result (servers with distance and rtt, rings,
query bytes, elapsed seconds) and the median latency. Tests and the lab
run it inside namespaces; it sends only what the searches send.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from mcp2p.config import find_config, load_config, parse_override


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mcp2p.lab.probe")
    p.add_argument("pattern")
    p.add_argument("--config")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--repeat", type=int, default=1, help="searches to run, one after another")
    p.add_argument("--pause", type=float, default=0.05, help="seconds between searches")
    args = p.parse_args(argv)
    if not 1 <= args.repeat <= 1000:
        p.error("--repeat must be in [1, 1000]")
    config = load_config(find_config(args.config), [parse_override(s) for s in args.set])

    from twisted.internet import defer, task

    from mcp2p.app import build_client

    runs: list[dict[str, Any]] = []

    async def run(reactor: Any) -> None:
        node = build_client(config, reactor)
        try:
            for i in range(args.repeat):
                if i:
                    await task.deferLater(reactor, args.pause, lambda: None)
                started = reactor.seconds()
                result = await node.search(pattern=args.pattern)
                out = result.to_json()
                out["latency"] = reactor.seconds() - started
                runs.append(out)
        finally:
            await node.stop()
        print(json.dumps(summary(runs)))

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    return 0  # not reached: react exits


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [r["latency"] for r in runs]
    return {
        "runs": runs,
        "median_latency": statistics.median(latencies),
        "query_bytes": statistics.median(r["query_bytes"] for r in runs),
    }


if __name__ == "__main__":
    sys.exit(main())
