"""Many fetches through one daemon's API (`mcp2p.lab.experiments.groups`).

argv: STATE_DIR PORT NAMES_FILE OUT_DIR GO_AT DEADLINE OUT_FILE. At GO_AT
(a time.time()) posts a fetch of every name in NAMES_FILE (a JSON list),
then polls them (one keep-alive HTTP connection) until all finished or
DEADLINE; cancels what is left and writes one JSON list to OUT_FILE.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from typing import Any

from mcp2p.api.client import ApiClient, ApiError


class _Api:
    """One keep-alive connection, reopened on errors (four tries a call)."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        for _attempt in range(4):
            try:
                if self.conn is None:
                    self.conn = self.client.connection(timeout=20)
                self.conn.request(
                    method,
                    path,
                    body=json.dumps(body) if body is not None else None,
                    headers=self.client.headers(),
                )
                r = self.conn.getresponse()
                data = r.read()
                return r.status, (json.loads(data) if data.strip() else None)
            except (OSError, http.client.HTTPException, ValueError, ApiError):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                time.sleep(0.1)
        return 0, None


def main(argv: list[str]) -> int:
    state, port, names_file, out_dir, go_text, deadline_text, out_file = argv[:7]
    api = _Api(ApiClient(state, port=int(port)))
    with open(names_file) as nf:
        names = json.load(nf)
    go_at, deadline = float(go_text), float(deadline_text)
    while time.time() < go_at:
        time.sleep(0.002)
    fetches: list[dict[str, Any]] = []
    for name in names:
        t = time.time()
        body = {"target": name, "out_dir": out_dir, "sources": 1}
        status, reply = api.call("POST", "/api/fetch", body)
        tid = reply.get("id") if status == 200 and isinstance(reply, dict) else None
        fetches.append(
            {
                "name": name,
                "id": tid,
                "t_post": t,
                "next": 0,
                "state": "running" if tid else "failed",
                "events": [],
                "error": "" if tid else f"POST failed: {status} {reply}",
            }
        )
    while time.time() < deadline:
        running = [f for f in fetches if f["state"] == "running"]
        if not running:
            break
        t0 = time.time()
        for f in running:
            status, reply = api.call("GET", f"/api/transfers/{f['id']}?since={f['next']}")
            if status != 200 or not isinstance(reply, dict):
                continue
            now = time.time()
            for e in reply["events"]:
                if e.get("event") != "progress":
                    e["t"] = now
                    f["events"].append(e)
            f["next"] = reply["next"]
            if reply["state"] != "running":
                f["state"], f["result"], f["t_end"] = reply["state"], reply.get("result"), now
        time.sleep(max(0.0, 0.25 - (time.time() - t0)))
    for f in fetches:
        if f["state"] == "running":
            f["state"], f["error"] = "timeout", "cut at the run's deadline"
            api.call("DELETE", f"/api/transfers/{f['id']}")
    with open(out_file, "w") as out:
        json.dump(fetches, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
