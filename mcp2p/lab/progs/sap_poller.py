"""When SAP names appear: poll a daemon's SAP directory for each name until
all are there or the deadline passes (`mcp2p.lab.experiments.discovery`).

argv: STATE_DIR PORT NAMES_JSON DEADLINE (a time.time()). Prints one JSON
line: ``{"seen": {name: time first seen}, "polls": N}``.
"""

from __future__ import annotations

import json
import sys
import time

from mcp2p.api.client import ApiClient, ApiError


def main(argv: list[str]) -> int:
    state, port = argv[0], int(argv[1])
    names, deadline = json.loads(argv[2]), float(argv[3])
    client = ApiClient(state, port=port)
    seen: dict[str, float] = {}
    polls = 0
    while time.time() < deadline and len(seen) < len(names):
        for name in names:
            if name in seen:
                continue
            polls += 1
            try:
                result = client.call(
                    "POST", "/api/search", {"method": "sap", "pattern": name}, timeout=5
                )
                if any(f["name"] == name for s in result["servers"] for f in s["files"]):
                    seen[name] = time.time()
            except (ApiError, OSError, ValueError, KeyError, TypeError):
                pass
        time.sleep(0.1)
    print(json.dumps({"seen": seen, "polls": polls}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
