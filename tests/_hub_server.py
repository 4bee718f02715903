"""A small local server that speaks the part of the Hugging Face Hub HTTP API that huggingface_hub,
transformers and evaluate use to create a repository, commit files and download them again.

Why: publishing must be tested end to end without the internet. The server is a real HTTP server on
127.0.0.1 (ThreadingHTTPServer, port 0); repositories live in a temporary folder with content-addressed
blobs, git-style blob ids and a real sha1 commit hash per commit, branches, and Bearer-token auth.

Endpoints (as called by huggingface_hub 2.x and evaluate 0.4.x):

    GET  /api/whoami-v2
    POST /api/repos/create                                   {name, organization, type, visibility|private, sdk}
    POST /api/validate-yaml                                  {content, repoType}
    GET  /api/{type}s/{ns}/{name}[/revision/{rev}]           repo info (sha, siblings, private, sdk)
    GET  /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]        ?recursive=
    POST /api/{type}s/{ns}/{name}/paths-info/{rev}           form: paths=...
    GET  /api/{type}s/{ns}/{name}/refs
    POST /api/{type}s/{ns}/{name}/branch/{branch}            {startingPoint}
    POST /api/{type}s/{ns}/{name}/preupload/{rev}            answers uploadMode "regular" for every file
    POST /api/{type}s/{ns}/{name}/commit/{rev}               NDJSON: header, file (base64), deletedFile, deletedFolder
    HEAD|GET /[{type}s/]{ns}/{name}/resolve/{rev}/{path}     X-Repo-Commit, ETag, Content-Length, body

The server answers "regular" to every preupload request, so clients send file contents inline (base64)
in the commit and never try LFS or Xet storage. Commits of "lfsFile" entries are therefore refused.
Unknown endpoints answer 404 and are recorded in ``server.unhandled`` so tests can see what was missing.
Errors carry the Hub's ``X-Error-Code`` / ``X-Error-Message`` headers that huggingface_hub maps to its
exception classes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def git_blob_id(content: bytes) -> str:
    """The git blob sha1, which is what the Hub reports as a regular file's oid (and what
    huggingface_hub compares against to skip unchanged files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubError(Exception):
    """An HTTP error answer with the Hub's error headers."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    description: str
    files: dict[str, str]  # path -> blob id
    date: float


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    sdk: str | None
    refs: dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)


class HubState:
    """Repositories, blobs and tokens. All access goes through one lock."""

    def __init__(self, root: Path, tokens: dict[str, str], orgs: dict[str, list[str]] | None = None):
        self.root = root
        self.blob_dir = root / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tokens = dict(tokens)  # token -> user name
        self.orgs = orgs or {}  # user name -> organisations the user may write to
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.RLock()

    # -- blobs -------------------------------------------------------------------------------------
    def put_blob(self, content: bytes) -> str:
        oid = git_blob_id(content)
        path = self.blob_dir / oid
        if not path.exists():
            tmp = path.with_suffix(".tmp" + str(threading.get_ident()))
            tmp.write_bytes(content)
            tmp.replace(path)
        return oid

    def blob_path(self, oid: str) -> Path:
        return self.blob_dir / oid

    def blob_size(self, oid: str) -> int:
        return self.blob_path(oid).stat().st_size

    # -- repos -------------------------------------------------------------------------------------
    def get_repo(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self.can_read(user, repo)):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def can_read(self, user: str | None, repo: Repo) -> bool:
        return user is not None and self.can_write(user, repo.repo_id.split("/")[0])

    def can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (namespace == user or namespace in self.orgs.get(user, []))

    def resolve(self, repo: Repo, revision: str) -> Commit:
        if revision in repo.refs:
            return repo.commits[repo.refs[revision]]
        if COMMIT_RE.match(revision) and revision in repo.commits:
            return repo.commits[revision]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def make_commit(self, repo: Repo, parent: Commit | None, files: dict[str, str], title: str, desc: str) -> Commit:
        tree = hashlib.sha1("".join(f"{p}\0{o}\n" for p, o in sorted(files.items())).encode()).hexdigest()
        now = time.time()
        body = f"tree {tree}\nparent {parent.oid if parent else ''}\ndate {now!r}\n\n{title}\n\n{desc}"
        oid = hashlib.sha1(body.encode()).hexdigest()
        commit = Commit(oid, parent.oid if parent else None, title, desc, files, now)
        repo.commits[oid] = commit
        return commit

    def create_repo(self, repo_type: str, repo_id: str, private: bool, sdk: str | None) -> Repo:
        repo = Repo(repo_type, repo_id, private, sdk)
        # Like the Hub, a new repository starts with one commit holding a .gitattributes file.
        attrs = self.put_blob(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
        first = self.make_commit(repo, None, {".gitattributes": attrs}, "initial commit", "")
        repo.refs["main"] = first.oid
        self.repos[(repo_type, repo_id)] = repo
        return repo


class FakeHub:
    """Start with ``FakeHub(tokens={"hf_token": "ns"})`` as a context manager; ``url`` is the endpoint."""

    def __init__(self, tokens: dict[str, str], orgs: dict[str, list[str]] | None = None, root: Path | None = None):
        self._tmp = None if root is not None else tempfile.mkdtemp(prefix="fakehub-")
        self.state = HubState(Path(root or self._tmp), tokens, orgs)
        self.requests: list[tuple[str, str, int]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.faults: list[tuple[str, re.Pattern, int]] = []
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), name="fake-hub", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def fail_next(self, method: str, path_pattern: str, status: int = 500) -> None:
        """Fault injection: answer the next `method` request whose path matches with `status`, doing nothing."""
        self.faults.append((method, re.compile(path_pattern), status))

    # -- inspection helpers for tests (read-only views of the state) -------------------------------
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        with self.state.lock:
            return self.state.repos.get((repo_type, repo_id))

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        with self.state.lock:
            repo = self.state.repos[(repo_type, repo_id)]
            commit = self.state.resolve(repo, revision)
            return {p: self.state.blob_path(o).read_bytes() for p, o in commit.files.items()}


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    server_version = "FakeHub/1.0"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet: tests read hub.requests instead
        pass

    # -- plumbing ----------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.request_path = split.path
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self.segments = [unquote(s) for s in split.path.split("/")[1:]]
        self._body_read = False
        try:
            self._inject_fault(method, split.path)
            self.user = self._authenticate()
            self._route(method)
        except HubError as err:
            if not self._body_read:  # drain it, or closing the socket may reset the connection
                self._body()
            self._send_error(err)
        except Exception as err:  # a bug in the fake server: answer 500 and say what happened
            self._send_error(HubError(500, f"fake hub internal error: {err!r}"))

    def _authenticate(self) -> str | None:
        header = self.headers.get("Authorization")
        if header is None:
            return None
        token = header[7:] if header.lower().startswith("bearer ") else ""
        user = self.hub.state.tokens.get(token)
        if user is None:
            raise HubError(401, INVALID_CREDENTIALS)
        return user

    def _inject_fault(self, method: str, path: str) -> None:
        for i, (m, pattern, status) in enumerate(self.hub.faults):
            if m == method and pattern.search(path):
                del self.hub.faults[i]
                raise HubError(status, "injected failure")

    def _body(self) -> bytes:
        self._body_read = True
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json_body(self) -> dict:
        try:
            return json.loads(self._body() or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"invalid JSON body: {err}") from err

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, head: bool = False) -> None:
        # Recorded before the client can see the answer, so tests that read `requests` never race it.
        self.hub.requests.append((self.command, self.request_path, status))
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_json(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _send_error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        if err.commit:
            headers["X-Repo-Commit"] = err.commit
        self._send(err.status, json.dumps({"error": err.message}).encode(),
                   {"Content-Type": "application/json", **headers}, head=self.command == "HEAD")

    def _need_write(self, namespace: str) -> str:
        if self.user is None:
            raise HubError(401, "You must be authenticated to do this")
        if not self.hub.state.can_write(self.user, namespace):
            raise HubError(403, f"You don't have the rights to write in {namespace}")
        return self.user

    # -- routing -----------------------------------------------------------------------------------
    def _route(self, method: str) -> None:
        s = self.segments
        if s[:1] == ["api"]:
            if s[1:] == ["agent-harnesses"] and method == "GET":  # huggingface_hub's agent registry
                self._send_json(200, {"standardEnvVars": [], "harnesses": {}})
                return
            if s[1:] == ["whoami-v2"] and method == "GET":
                return self._whoami()
            if s[1:] == ["repos", "create"] and method == "POST":
                return self._create_repo()
            if s[1:] == ["validate-yaml"] and method == "POST":
                return self._validate_yaml()
            if len(s) >= 4 and s[1] in REPO_TYPES:
                return self._repo_api(method, REPO_TYPES[s[1]], f"{s[2]}/{s[3]}", s[4:])
        else:
            repo_type, rest = "model", s
            if s and s[0] in REPO_TYPES and s[0] != "models":
                repo_type, rest = REPO_TYPES[s[0]], s[1:]
            if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(method, repo_type, f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]))
        self.hub.unhandled.append((method, self.path))
        raise HubError(404, f"Not found: {method} {self.path}")

    def _whoami(self) -> None:
        if self.user is None:
            raise HubError(401, INVALID_CREDENTIALS)
        orgs = [{"name": o} for o in self.hub.state.orgs.get(self.user, [])]
        self._send_json(200, {"type": "user", "name": self.user, "orgs": orgs,
                              "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def _create_repo(self) -> None:
        body = self._json_body()
        name, namespace = body.get("name"), body.get("organization") or self.user
        repo_type = body.get("type") or "model"
        if repo_type not in URL_PREFIX:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        self._need_write(namespace or "")
        if not (isinstance(name, str) and NAME_RE.match(name) and NAME_RE.match(namespace)) or "--" in name:
            raise HubError(400, f"Invalid repo name: {namespace}/{name}")
        if repo_type == "space" and body.get("sdk") not in ("gradio", "streamlit", "docker", "static"):
            raise HubError(400, "A Space needs an sdk: gradio, streamlit, docker or static")
        repo_id = f"{namespace}/{name}"
        url = f"{self.hub.url}/{URL_PREFIX[repo_type]}{repo_id}"
        private = body.get("visibility") == "private" or bool(body.get("private"))
        with self.hub.state.lock:
            if (repo_type, repo_id) in self.hub.state.repos:
                self._send_json(409, {"error": f"You already created this {repo_type} repo", "url": url},
                                {"X-Error-Message": f"You already created this {repo_type} repo"})
                return
            self.hub.state.create_repo(repo_type, repo_id, private, body.get("sdk"))
        self._send_json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self) -> None:
        body = self._json_body()
        content = body.get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
        errors, warnings = [], []
        if match is None:
            warnings.append({"message": "empty or missing yaml metadata in repo card"})
        else:
            try:
                meta = yaml.safe_load(match.group(1))
                if meta is not None and not isinstance(meta, dict):
                    errors.append({"message": "metadata must be a YAML mapping"})
            except yaml.YAMLError as err:
                errors.append({"message": f"invalid YAML: {err}"})
        self._send_json(400 if errors else 200, {"errors": errors, "warnings": warnings})

    def _repo_api(self, method: str, repo_type: str, repo_id: str, rest: list[str]) -> None:
        state = self.hub.state
        with state.lock:
            repo = state.get_repo(repo_type, repo_id, self.user)
            if not rest and method == "GET":
                return self._info(repo, state.resolve(repo, "main"))
            if len(rest) == 2 and rest[0] == "revision" and method == "GET":
                return self._info(repo, state.resolve(repo, rest[1]))
            if len(rest) >= 2 and rest[0] == "tree" and method == "GET":
                return self._tree(repo, state.resolve(repo, rest[1]), "/".join(rest[2:]))
            if len(rest) == 2 and rest[0] == "paths-info" and method == "POST":
                return self._paths_info(repo, state.resolve(repo, rest[1]))
            if rest == ["refs"] and method == "GET":
                branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in repo.refs.items()]
                self._send_json(200, {"branches": branches, "tags": [], "converts": []})
                return
            if len(rest) == 2 and rest[0] == "branch" and method == "POST":
                return self._create_branch(repo, rest[1])
            if len(rest) == 2 and rest[0] == "preupload" and method == "POST":
                return self._preupload(repo, rest[1])
            if len(rest) == 2 and rest[0] == "commit" and method == "POST":
                return self._commit(repo, rest[1])
        self.hub.unhandled.append((method, self.path))
        raise HubError(404, f"Not found: {method} {self.path}")

    def _info(self, repo: Repo, commit: Commit) -> None:
        info = {
            "id": repo.repo_id, "_id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
            "sha": commit.oid, "private": repo.private, "disabled": False, "gated": False,
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
            "siblings": [{"rfilename": p} for p in sorted(commit.files)], "tags": [], "downloads": 0, "likes": 0,
        }
        if repo.repo_type == "space":
            info["sdk"] = repo.sdk
        self._send_json(200, info)

    def _entry(self, commit: Commit, path: str) -> dict:
        oid = commit.files[path]
        return {"type": "file", "oid": oid, "size": self.hub.state.blob_size(oid), "path": path}

    def _tree(self, repo: Repo, commit: Commit, prefix: str) -> None:
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        base = f"{prefix.rstrip('/')}/" if prefix else ""
        entries, folders = [], set()
        for path in sorted(commit.files):
            if not path.startswith(base):
                continue
            rest = path[len(base):].split("/")
            if len(rest) == 1:
                entries.append(self._entry(commit, path))
                continue
            for depth in range(1, len(rest) if recursive else 2):
                folders.add(base + "/".join(rest[:depth]))
            if recursive:
                entries.append(self._entry(commit, path))
        if prefix and not entries and not folders:
            raise HubError(404, f"{prefix} does not exist on {commit.oid}", "EntryNotFound", commit.oid)
        entries += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
                    for f in sorted(folders)]
        self._send_json(200, entries)

    def _paths_info(self, repo: Repo, commit: Commit) -> None:
        form = parse_qs(self._body().decode())
        paths = form.get("paths", [])
        self._send_json(200, [self._entry(commit, p) for p in paths if p in commit.files])

    def _create_branch(self, repo: Repo, branch: str) -> None:
        self._need_write(repo.repo_id.split("/")[0])
        body = self._json_body()
        if branch in repo.refs:
            raise HubError(409, f"Branch {branch} already exists")
        start = self.hub.state.resolve(repo, body.get("startingPoint") or "main")
        repo.refs[branch] = start.oid
        self._send_json(200, {})

    def _preupload(self, repo: Repo, revision: str) -> None:
        self._need_write(repo.repo_id.split("/")[0])
        commit = self.hub.state.resolve(repo, revision)
        files = self._json_body().get("files")
        if not isinstance(files, list):
            raise HubError(400, "preupload expects a list of files")
        answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                   "oid": commit.files.get(f["path"])} for f in files]
        self._send_json(200, {"files": answer, "commitOid": commit.oid})

    def _commit(self, repo: Repo, branch: str) -> None:
        self._need_write(repo.repo_id.split("/")[0])
        if self.query.get("create_pr"):
            raise HubError(400, "pull requests are not supported by this server")
        if branch not in repo.refs:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        parent = self.hub.state.resolve(repo, branch)
        if header.get("parentCommit") and header["parentCommit"] != parent.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(parent.files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = value.get("path", "")
            if not path or path.startswith("/") or ".." in path.split("/"):
                raise HubError(400, f"invalid path in commit: {path!r}")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "file content must be base64 encoded")
                files[path] = self.hub.state.put_blob(base64.b64decode(value["content"]))
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                files = {p: o for p, o in files.items() if not p.startswith(path.rstrip("/") + "/")}
            else:
                raise HubError(400, f"unsupported commit operation {key!r} (this server only accepts inline files)")
        commit = self.hub.state.make_commit(repo, parent, files, header.get("summary", ""),
                                            header.get("description", ""))
        repo.refs[branch] = commit.oid
        url = f"{self.hub.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        self._send_json(200, {"success": True, "commitOid": commit.oid, "commitUrl": url})

    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        state = self.hub.state
        with state.lock:
            repo = state.get_repo(repo_type, repo_id, self.user)
            commit = state.resolve(repo, revision)
            oid = commit.files.get(path)
            if oid is None:
                raise HubError(404, "Entry not found", "EntryNotFound", commit.oid)
            content = state.blob_path(oid).read_bytes()
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{oid}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        start = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        if start and method == "GET" and 0 < int(start.group(1)) < len(content):
            first = int(start.group(1))
            headers["Content-Range"] = f"bytes {first}-{len(content) - 1}/{len(content)}"
            self._send(206, content[first:], headers)
            return
        self._send(200, content, headers, head=method == "HEAD")


def main() -> None:
    """Run the server in the foreground: ``python tests/_hub_server.py TOKEN USER`` (prints its URL)."""
    import sys

    hub = FakeHub(tokens={sys.argv[1]: sys.argv[2]})
    print(hub.url, flush=True)
    hub.httpd.serve_forever()


if __name__ == "__main__":
    main()
