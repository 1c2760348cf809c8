"""A local HTTP server that stands in for the Hugging Face hub (huggingface-hub honours HF_ENDPOINT).

Serves HEAD/GET on /{repo}/resolve/{revision}/{file} with Range support, and the tree listing API.
While `cut_downloads_at` is set, every full download is cut short there (to exercise resuming);
it can also lie about a size.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range header
        self.cut_downloads_at: int | None = None
        self.claimed_sizes: dict[str, int] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                tree = re.match(r"^/api/models/(.+?)/tree/[^/?]+", self.path)
                if tree:
                    files = hub.repos.get(tree.group(1))
                    if files is None:
                        return self._reply(404, b"{}", {"X-Error-Code": "RepoNotFound"})
                    listing = [
                        {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                        for name, data in files.items()
                    ]
                    return self._reply(200, json.dumps(listing).encode(), {"Content-Type": "application/json"}, body)
                match = re.match(r"^/(.+?)/resolve/[^/]+/(.+)$", self.path.split("?")[0])
                files = hub.repos.get(match.group(1)) if match else None
                if files is None:
                    return self._reply(404, b"", {"X-Error-Code": "RepoNotFound"}, body)
                data = files.get(match.group(2))
                if data is None:
                    return self._reply(404, b"", {"X-Error-Code": "EntryNotFound"}, body)
                etag = '"' + hashlib.sha256(data).hexdigest() + '"'
                headers = {"X-Repo-Commit": COMMIT, "ETag": etag, "Accept-Ranges": "bytes"}
                if not body:
                    size = hub.claimed_sizes.get(match.group(2), len(data))
                    headers["Content-Length"] = str(size)
                    self.send_response(200)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    return
                start = 0
                ranged = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if ranged:
                    start = int(ranged.group(1))
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                payload = data[start:]
                if hub.cut_downloads_at is not None and not ranged:
                    # Promise everything, send part, then drop the connection.
                    cut = hub.cut_downloads_at
                    self.send_response(200)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self._reply(206 if ranged else 200, payload, headers, body)

            def _reply(self, status, payload, headers, body=True):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if body:
                    self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
