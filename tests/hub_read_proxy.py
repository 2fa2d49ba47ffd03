"""TEST-ONLY read proxy in front of olah that answers a missing file or folder the way the Hub does.

olah (offline, serving git work trees) answers a file or tree path that its repo does not hold with 401
"repository not found"; the Hub answers 404 ``EntryNotFound``. Loaders that probe optional files treat the
first as fatal and the second as "not there": ``AutoTokenizer`` probes ``tokenizer.model``, ``added_tokens.json``,
``chat_template.jinja`` and lists ``additional_chat_templates/``; ``pipeline`` probes processor configs. This
proxy checks each ``resolve`` and ``tree`` path against the git repo olah serves (``git cat-file -e``) and answers
a missing one with the Hub's 404; every other request is forwarded to olah unchanged. It fixes olah's fault and
nothing else, so the plain-library loads of the Hub tests see what they would see on the Hub.
"""

from __future__ import annotations

import http.client
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

_RESOLVE = re.compile(r"/(?:models/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)")
_TREE = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)/(?P<path>.+)")
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


def missing(mirrors: Path, url_path: str) -> bool:
    """Whether ``url_path`` asks for a file or folder of a served repo that its revision does not hold."""
    path = urlparse(url_path).path
    m = _RESOLVE.fullmatch(path) or _TREE.fullmatch(path)
    if m is None:
        return False
    repo = mirrors / "models" / m["repo"]
    if not (repo / ".git").exists():
        return False  # not a repo olah serves from the mirrors: its own answer stands
    spec = f"{unquote(m['rev'])}:{unquote(m['path']).rstrip('/')}"
    return subprocess.run(["git", "-C", str(repo), "cat-file", "-e", spec], capture_output=True).returncode != 0


class ReadProxy:
    """``with ReadProxy(mirrors, upstream_url) as proxy:`` serves ``proxy.url``; see the module docstring."""

    def __init__(self, mirrors: Path, upstream: str):
        self.mirrors = Path(mirrors)
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._answer("GET")

            def do_HEAD(self) -> None:
                self._answer("HEAD")

            def _answer(self, method: str) -> None:
                if missing(proxy.mirrors, self.path):
                    body = b'{"error": "Entry not found"}'
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Error-Message", "Entry not found")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if method == "GET":
                        self.wfile.write(body)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP | {"host"}}
                conn.request(method, self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if method == "HEAD" else str(len(body))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if method == "GET":
                    self.wfile.write(body)
                conn.close()

        return Handler

    def __enter__(self) -> ReadProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
