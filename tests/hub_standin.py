"""TEST STAND-IN of the Hugging Face Hub *write* API. Not a Hub, not for use outside the tests.

No installable server accepts Hub uploads offline (olah only mirrors reads), so the tests talk to this
small standard-library HTTP server. It answers the requests huggingface_hub 2.4 makes for ``create_repo``,
``upload_folder``/``create_commit`` (regular, base64 uploads only: no LFS, no Xet), ``create_branch``,
``create_tag``, ``list_repo_refs``, ``list_repo_files`` and ``repo_info(revision=...)``, and commits what it
receives into plain git repositories under ``<mirrors>/models/<org>/<name>``, which ``olah`` serves for
reads. A push made with the real ``HfApi`` is thus read back by the real ``hf_hub_download``,
``from_pretrained`` and ``timm.create_model("hf-hub:...")``.

Behaviour copied from the Hub: a repo is created with one commit holding ``.gitattributes``;
``create_repo`` on an existing repo answers 409; preupload returns the git blob id of a file already on
the branch so unchanged files are skipped (no empty commits); tags are immutable (409 when one exists);
writes need ``Authorization: Bearer <token>`` matching the configured token (401 otherwise).

Pull requests: a commit with ``create_pr=1`` starts ``refs/pr/<n>`` at the branch head and answers its
``/discussions/<n>`` URL; later commits and preuploads may name ``refs/pr/<n>`` as their revision.

Test hooks: ``fail_commits`` (repo ids whose next commit answers 500 after the files were received),
``fail_commit_at`` (repo id -> the number of the commit request, counted from 1, that answers 500: a push
killed mid-way), ``committed`` (repo id -> the files each commit made carried), ``created`` (repo id ->
its ``private`` flag as asked) and ``requests`` (method and
path of every request, for assertions; headers are never recorded).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "hub-standin",
    "GIT_AUTHOR_EMAIL": "standin@localhost",
    "GIT_COMMITTER_NAME": "hub-standin",
    "GIT_COMMITTER_EMAIL": "standin@localhost",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str, data: bytes | None = None, env: dict | None = None) -> str:
    """Run git in ``repo``; returns stdout (stripped)."""
    out = subprocess.run(
        ["git", "-C", str(repo), *args],
        input=data,
        capture_output=True,
        check=True,
        env={**os.environ, **_GIT_ENV, **(env or {})},
    )
    return out.stdout.decode().rstrip("\n")


def init_repo(path: Path) -> None:
    """A new repo with the Hub's first commit (``.gitattributes`` on ``main``)."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    (path / ".gitattributes").write_bytes(GITATTRIBUTES)
    git(path, "add", ".gitattributes")
    git(path, "commit", "-q", "-m", "initial commit")


def seed_repo(mirrors: Path, repo_id: str, folder: Path) -> str:
    """Create ``repo_id`` directly as a git repo holding the files of ``folder``; returns the commit sha."""
    path = mirrors / "models" / repo_id
    init_repo(path)
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            dest = path / f.relative_to(folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.read_bytes())
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", f"add {folder.name}")
    return git(path, "rev-parse", "HEAD")


class HubStandin:
    """The stand-in server; ``with HubStandin(mirrors, token=...) as hub: hub.url``."""

    def __init__(self, mirrors: str | os.PathLike, *, token: str, host: str = "127.0.0.1"):
        self.mirrors = Path(mirrors)
        self.token = token
        self.fail_commits: set[str] = set()
        self.fail_commit_at: dict[str, int] = {}
        self.committed: dict[str, list[list[str]]] = {}
        self.created: dict[str, dict] = {}  # repo id -> {"private": ...} as asked at creation
        self._commit_requests: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()  # one git operation at a time, like one Hub commit per repo
        self._server = ThreadingHTTPServer((host, 0), _make_handler(self))
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def repo_path(self, repo_id: str) -> Path:
        return self.mirrors / "models" / repo_id

    # ---- git operations -------------------------------------------------------------------------------------

    def resolve(self, repo: Path, rev: str) -> str | None:
        try:
            return git(repo, "rev-parse", "--verify", "-q", f"{unquote(rev)}^{{commit}}")
        except subprocess.CalledProcessError:
            return None

    def blob_ids(self, repo: Path, rev: str) -> dict[str, str]:
        """path -> git blob id of every file at ``rev``."""
        out = git(repo, "ls-tree", "-r", "-l", rev)
        files = {}
        for line in out.splitlines():
            meta, path = line.split("\t", 1)
            _, _, oid, _size = meta.split()
            files[path] = oid
        return files

    def tree(self, repo: Path, rev: str) -> list[dict]:
        out = git(repo, "ls-tree", "-r", "-l", rev)
        entries = []
        for line in out.splitlines():
            meta, path = line.split("\t", 1)
            _, _, oid, size = meta.split()
            entries.append({"type": "file", "path": path, "oid": oid, "size": int(size)})
        return entries

    def commit(self, repo: Path, branch: str, lines: list[dict]) -> str:
        """Apply NDJSON commit lines to ``branch`` (a branch name or a full ``refs/...`` name) with git plumbing
        (the work tree is synced after)."""
        ref = branch if branch.startswith("refs/") else f"refs/heads/{branch}"
        parent = self.resolve(repo, ref)
        index = repo / ".git" / f"standin-index-{threading.get_ident()}"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            if parent:
                git(repo, "read-tree", parent, env=env)
            else:
                git(repo, "read-tree", "--empty", env=env)
            header = {}
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    if value.get("encoding") != "base64":
                        raise ValueError(f"unsupported encoding {value.get('encoding')!r}")
                    oid = git(repo, "hash-object", "-w", "--stdin", data=base64.b64decode(value["content"]))
                    git(repo, "update-index", "--add", "--cacheinfo", f"100644,{oid},{value['path']}", env=env)
                elif key == "deletedFile":
                    git(repo, "update-index", "--force-remove", value["path"], env=env)
                elif key == "deletedFolder":
                    git(repo, "rm", "-r", "-q", "--cached", "--ignore-unmatch", value["path"].rstrip("/"), env=env)
                else:
                    raise ValueError(f"the stand-in does not support {key!r} (LFS/copies)")
            tree = git(repo, "write-tree", env=env)
            message = header.get("summary", "") + ("\n\n" + header["description"] if header.get("description") else "")
            args = ["commit-tree", tree, "-m", message or "commit"] + (["-p", parent] if parent else [])
            sha = git(repo, *args)
            git(repo, "update-ref", ref, sha)
        finally:
            if index.exists():
                index.unlink()
        if git(repo, "symbolic-ref", "HEAD") == ref:
            git(repo, "reset", "-q", "--hard")  # keep the checked-out work tree equal to the branch
        return sha


def _make_handler(hub: HubStandin):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's HTTP client expects

        def log_message(self, *args) -> None:  # quiet; requests are recorded in hub.requests instead
            pass

        def _body(self) -> bytes:
            # Always read the body, even for errors, or the next request on this connection breaks.
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, obj=None, *, extra: dict | None = None) -> None:
            data = json.dumps(obj if obj is not None else {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, code: str | None = None) -> None:
            self._send(
                status,
                {"error": message},
                extra={"X-Error-Message": message, **({"X-Error-Code": code} if code else {})},
            )

        def _authorised(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {hub.token}":
                return True
            self._error(401, "Invalid credentials in Authorization header")
            return False

        def do_GET(self) -> None:
            self._body()
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST", self._body())

        def do_DELETE(self) -> None:
            self._body()
            self._route("DELETE")

        def _route(self, method: str, body: bytes = b"") -> None:
            url = urlparse(self.path)
            path = url.path
            hub.requests.append((method, path))
            try:
                with hub._lock:
                    self._dispatch(method, path, parse_qs(url.query), body)
            except Exception as err:  # a bug in the stand-in: answer 500 so the client shows it
                self._error(500, f"stand-in error: {type(err).__name__}: {err}")

        def _dispatch(self, method: str, path: str, query: dict, body: bytes) -> None:
            if method == "POST" and path == "/api/repos/create":
                if not self._authorised():
                    return
                req = json.loads(body or b"{}")
                repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                repo = hub.repo_path(repo_id)
                if repo.exists():  # the Hub's 409 also carries the repo url (create_repo(exist_ok=True) reads it)
                    message = "You already created this model repo"
                    return self._send(
                        409, {"error": message, "url": f"{hub.url}/{repo_id}"}, extra={"X-Error-Message": message}
                    )
                init_repo(repo)
                # huggingface_hub 2.4 sends "visibility": "private"; older versions sent "private": true.
                hub.created[repo_id] = {"private": req.get("visibility") == "private" or bool(req.get("private"))}
                return self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})
            if method == "POST" and path == "/api/validate-yaml":
                return self._send(200, {"warnings": []})
            m = re.fullmatch(
                r"/api/models/([^/]+/[^/]+)/(preupload|commit|branch|tag|revision|tree|refs)(?:/(.*))?", path
            )
            if not m:
                return self._error(404, f"stand-in: no route for {method} {path}")
            repo_id, action, rest = m.group(1), m.group(2), unquote(m.group(3) or "")
            repo = hub.repo_path(repo_id)
            if not repo.exists():
                return self._error(404, "Repository not found", "RepoNotFound")
            if method == "POST" and not self._authorised():
                return
            if action == "refs" and method == "GET":
                return self._send(200, self._refs(repo))
            if action == "revision" and method == "GET":
                sha = hub.resolve(repo, rest)
                if sha is None:
                    return self._error(404, f"Invalid rev id: {rest}", "RevisionNotFound")
                files = [{"rfilename": p} for p in hub.blob_ids(repo, sha)]
                return self._send(200, {"id": repo_id, "sha": sha, "siblings": files, "private": False})
            if action == "tree" and method == "GET":
                rev, _, sub = rest.partition("/")
                sha = hub.resolve(repo, rev)
                if sha is None:
                    return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                entries = [e for e in hub.tree(repo, sha) if not sub or e["path"].startswith(sub.rstrip("/") + "/")]
                return self._send(200, entries)
            ref = rest if rest.startswith("refs/") else f"refs/heads/{rest}"
            if action == "preupload" and method == "POST":
                sha = hub.resolve(repo, ref)
                existing = hub.blob_ids(repo, sha) if sha else {}
                files = json.loads(body)["files"]
                answer = [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": existing.get(f["path"])}
                    for f in files
                ]
                return self._send(200, {"files": answer, "commitOid": sha})
            if action == "commit" and method == "POST":
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                hub._commit_requests[repo_id] = number = hub._commit_requests.get(repo_id, 0) + 1
                if repo_id in hub.fail_commits or hub.fail_commit_at.get(repo_id) == number:
                    hub.fail_commits.discard(repo_id)
                    return self._error(500, "stand-in: injected commit failure")
                head = hub.resolve(repo, ref)
                if head is None:
                    return self._error(404, f"Invalid rev id: {rest}", "RevisionNotFound")
                answer = {}
                if query.get("create_pr") == ["1"]:
                    prs = git(repo, "for-each-ref", "--format=%(refname)", "refs/pr").split()
                    ref = f"refs/pr/{len(prs) + 1}"
                    git(repo, "update-ref", ref, head)
                    answer["pullRequestUrl"] = f"{hub.url}/{repo_id}/discussions/{len(prs) + 1}"
                sha = hub.commit(repo, ref, lines)
                files = [item["value"]["path"] for item in lines if item["key"] == "file"]
                hub.committed.setdefault(repo_id, []).append(files)
                answer.update(commitUrl=f"{hub.url}/{repo_id}/commit/{sha}", commitOid=sha)
                return self._send(200, answer)
            if action == "branch" and method == "POST":
                if hub.resolve(repo, f"refs/heads/{rest}"):
                    return self._error(409, f"Reference already exists: refs/heads/{rest}")
                start = (json.loads(body or b"{}") or {}).get("startingPoint") or "refs/heads/main"
                sha = hub.resolve(repo, start)
                if sha is None:
                    return self._error(404, f"Invalid rev id: {start}", "RevisionNotFound")
                git(repo, "update-ref", f"refs/heads/{rest}", sha)
                return self._send(200, {})
            if action == "tag" and method == "POST":
                req = json.loads(body or b"{}")
                sha = hub.resolve(repo, rest)
                if sha is None:
                    return self._error(404, f"Invalid rev id: {rest}", "RevisionNotFound")
                if hub.resolve(repo, f"refs/tags/{req['tag']}"):
                    return self._error(409, f"Tag already exists: {req['tag']}")
                if req.get("message"):
                    git(repo, "tag", "-a", req["tag"], sha, "-m", req["message"])
                else:
                    git(repo, "tag", req["tag"], sha)
                return self._send(200, {})
            return self._error(405, f"stand-in: {method} not supported on {path}")

        def _refs(self, repo: Path) -> dict:
            out = git(
                repo, "for-each-ref", "--format=%(refname)\t%(objectname)\t%(*objectname)", "refs/heads", "refs/tags"
            )
            refs = {"branches": [], "converts": [], "tags": [], "pullRequests": []}
            for line in out.splitlines():
                ref, obj, peeled = (line.split("\t") + ["", ""])[:3]
                kind = "branches" if ref.startswith("refs/heads/") else "tags"
                name = ref.split("/", 2)[2]
                refs[kind].append({"name": name, "ref": ref, "targetCommit": peeled or obj})
            return refs

    return Handler
