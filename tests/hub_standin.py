"""A small stand-in for the Hugging Face Hub's upload API on loopback, for ``huggingface_hub.HfApi``.

It answers the calls ``create_repo`` + ``upload_folder`` make (create, card validation, preupload, commit),
takes every file as a "regular" (inline, base64) upload, and records the repositories created and the
files committed, so a test checks exactly what a real upload would have sent. Point huggingface_hub at
it with ``HF_ENDPOINT=hub.url`` (and ``HF_HUB_OFFLINE=0``).
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class HubStandIn:
    """``with HubStandIn() as hub:`` serves on ``hub.url``; ``hub.repos``, ``hub.files``, ``hub.requests``."""

    def __init__(self, *, refuse_with: int | None = None) -> None:
        self.requests: list[tuple[str, str]] = []
        self.repos: list[dict[str, Any]] = []
        self.files: dict[str, dict[str, bytes]] = {}  # repo id -> path -> bytes
        self.validated: list[str] = []  # model cards sent to /api/validate-yaml
        self.refuse_with = refuse_with
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HubStandIn:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while size := int(self.rfile.readline().strip(), 16):
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return body
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:
                hub.requests.append(("GET", self.path))
                self._send(404, {"error": "not served by the stand-in"})

            def do_POST(self) -> None:
                body = self._body()
                hub.requests.append(("POST", self.path))
                if hub.refuse_with is not None:
                    return self._send(hub.refuse_with, {"error": "Invalid credentials in Authorization header"})
                if self.path == "/api/repos/create":
                    request = json.loads(body)
                    hub.repos.append(request)
                    return self._send(200, {"url": f"{hub.url}/{request['organization']}/{request['name']}"})
                if self.path == "/api/validate-yaml":  # a README.md's metadata, checked before the commit
                    hub.validated.append(json.loads(body).get("content", ""))
                    return self._send(200, {"errors": [], "warnings": []})
                parts = self.path.split("/")  # /api/models/ORG/NAME/{preupload|commit}/REVISION
                if len(parts) == 7 and parts[5] == "preupload":
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})  # fmt: skip
                if len(parts) == 7 and parts[5] == "commit":
                    repo = hub.files.setdefault(f"{parts[3]}/{parts[4]}", {})
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            repo[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    return self._send(200, {"commitUrl": f"{hub.url}/{parts[3]}/{parts[4]}/commit/{'a' * 40}",
                                            "commitOid": "a" * 40})  # fmt: skip
                self._send(404, {"error": f"not served by the stand-in: {self.path}"})

        return Handler


def cache_snapshot(cache_dir: Path, repo_id: str, source: Path, revision: str = "0" * 39 + "1") -> Path:
    """Put ``source``'s files into a Hugging Face cache as ``repo_id`` at ``main`` (the hub's on-disk layout:
    ``models--ORG--NAME/snapshots/REVISION/...`` and ``refs/main``), as a download would have left them."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(source, repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision
