"""One call to a daemon's local API; prints the JSON reply.

argv: STATE_DIR PORT METHOD PATH BODY TIMEOUT (BODY is JSON text or empty).
On an API error prints ``{"error": ...}`` and exits 3.
"""

from __future__ import annotations

import json
import sys

from mcp2p.api.client import ApiClient, ApiError


def main(argv: list[str]) -> int:
    state, port, method, path, body, timeout = argv[:6]
    try:
        reply = ApiClient(state, port=int(port)).call(
            method, path, json.loads(body) if body else None, timeout=float(timeout)
        )
    except ApiError as e:
        sys.stdout.write(json.dumps({"error": str(e)}))
        return 3
    sys.stdout.write(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
