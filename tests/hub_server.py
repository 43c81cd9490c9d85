"""A Hugging Face Hub-compatible server for tests and offline trials, on the standard library alone.

It speaks the parts of the Hub's HTTP API that `huggingface_hub`, `transformers` and `peft` use to
push and load model repositories: repo creation, branches, preupload, the git-LFS batch API and its
uploads, commits, repo info, tree listings and file resolution with the headers the client checks
(X-Repo-Commit, ETag, X-Error-Code). Xet storage is not spoken: clients need HF_HUB_DISABLE_XET=1.

    python tests/hub_server.py --port 8765 --root /tmp/hub
    HF_ENDPOINT=http://127.0.0.1:8765 HF_TOKEN=anything HF_HUB_DISABLE_XET=1 python extract/run.py --stage push ...

Writes need `Authorization: Bearer TOKEN` (any token, or one of --token when given). Tests inject
faults through POST /_test/fail {"method", "path" (a regex), "status", "times"} and read the request
log (method, path, status; never headers) from GET /_test/log.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
LFS_EXTENSIONS = (".safetensors", ".bin", ".pt", ".png", ".jpg", ".gz", ".xz", ".zip", ".npy")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub's rule: binary extensions and anything over 10 MB go to LFS


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Store:
    """Repos as JSON files (refs, commits, each commit's file table) and content-addressed blobs."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    def _repo_file(self, repo: str) -> Path:
        return self.root / "repos" / f"{repo}.json"

    def load(self, repo: str) -> dict:
        path = self._repo_file(repo)
        if not path.is_file():
            raise HubError(404, f"Repository {repo} not found", "RepoNotFound")
        return json.loads(path.read_text())

    def save(self, repo: str, data: dict) -> None:
        path = self._repo_file(repo)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def blob_path(self, oid: str) -> Path:
        return self.root / "blobs" / oid

    def put_blob(self, oid: str, data: bytes) -> None:
        tmp = self.blob_path(oid).with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.blob_path(oid))

    def create(self, repo: str, private: bool) -> bool:
        with self.lock:
            if self._repo_file(repo).is_file():
                return False
            root_commit = hashlib.sha1(f"init {repo} {time.time()}".encode()).hexdigest()
            self.save(repo, {"private": private, "refs": {"main": root_commit},
                             "commits": {root_commit: {"parent": None, "message": "initial commit", "files": {},
                                                       "date": time.time()}}})
            return True

    @staticmethod
    def resolve(data: dict, revision: str) -> str:
        revision = unquote(revision)
        if revision in data["refs"]:
            return data["refs"][revision]
        if revision in data["commits"]:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

    # ------------------------------------------------------------------ plumbing

    def log_message(self, fmt, *args):  # quiet; the request log below is what tests read
        pass

    def _body(self) -> bytes:
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

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.server.log.append({"method": self.command, "path": urlsplit(self.path).path, "status": status})

    def _json(self, status: int, data, head: bool = False) -> None:
        self._send(status, json.dumps(data).encode(), head=head)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        return bool(token) and (not self.server.tokens or token in self.server.tokens)

    def _require_write(self) -> None:
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _readable(self, repo: str) -> dict:
        data = self.server.store.load(repo)
        if data["private"] and not self._authorized():
            raise HubError(404, f"Repository {repo} not found", "RepoNotFound")
        return data

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        body = self._body() if method in ("POST", "PUT") else b""
        fault = self.server.take_fault(method, path)
        if fault is not None:
            self._json(fault, {"error": f"injected failure of {method} {path}"})
            return
        try:
            for route_method, pattern, handler in self.ROUTES:
                match = re.fullmatch(pattern, path)
                if match and route_method == method:
                    handler(self, body=body, **match.groupdict())
                    return
            raise HubError(404, f"no route for {method} {path}")
        except HubError as error:
            payload = json.dumps({"error": error.message}).encode()
            headers = {"X-Error-Message": error.message, **({"X-Error-Code": error.code} if error.code else {})}
            self._send(error.status, payload, headers, head=method == "HEAD")
        except Exception as error:  # a server bug: answer it (the client would otherwise retry a dropped line)
            traceback.print_exc()
            self._json(500, {"error": f"server error: {error!r}"}, head=method == "HEAD")

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # ------------------------------------------------------------------ repos and refs

    def create_repo(self, body: bytes) -> None:
        self._require_write()
        request = json.loads(body)
        repo = f"{request.get('organization') or 'user'}/{request['name']}"
        if request.get("type", "model") != "model":
            raise HubError(400, "this server hosts model repositories only")
        created = self.server.store.create(repo, bool(request.get("private")))
        url = f"{self.server.url}/{repo}"
        if not created:  # the Hub answers 409 with the url, which the client reads under exist_ok
            self._send(409, json.dumps({"error": "You already created this model repo", "url": url}).encode(),
                       {"X-Error-Message": "You already created this model repo"})
            return
        self._json(200, {"url": url, "name": repo, "id": repo})

    def repo_info(self, body: bytes, repo: str, revision: str = "main") -> None:
        data = self._readable(repo)
        sha = Store.resolve(data, revision)
        files = data["commits"][sha]["files"]
        siblings = [{"rfilename": p, "size": f["size"], "blobId": f["oid"],
                     **({"lfs": {"sha256": f["oid"], "size": f["size"], "pointerSize": 134}} if f["lfs"] else {})}
                    for p, f in sorted(files.items())]
        self._json(200, {"id": repo, "modelId": repo, "_id": repo, "sha": sha, "private": data["private"],
                         "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
                         "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                         "siblings": siblings})

    def create_branch(self, body: bytes, repo: str, branch: str) -> None:
        self._require_write()
        with self.server.store.lock:
            data = self.server.store.load(repo)
            branch = unquote(branch)
            if branch in data["refs"]:
                raise HubError(409, f"Reference {branch} already exists")
            start = json.loads(body or b"{}").get("startingPoint") or "main"
            data["refs"][branch] = Store.resolve(data, start)
            self.server.store.save(repo, data)
        self._json(200, {})

    def list_refs(self, body: bytes, repo: str) -> None:
        data = self._readable(repo)
        branches = [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
                    for name, sha in data["refs"].items()]
        self._json(200, {"branches": branches, "tags": [], "converts": []})

    # ------------------------------------------------------------------ files

    @staticmethod
    def _entry(path: str, f: dict) -> dict:
        entry = {"type": "file", "path": path, "size": f["size"], "oid": f["oid"]}
        if f["lfs"]:
            entry["lfs"] = {"oid": f["oid"], "size": f["size"], "pointerSize": 134}
        return entry

    def tree(self, body: bytes, repo: str, revision: str, path: str | None = None) -> None:
        path = path or ""
        data = self._readable(repo)
        files = data["commits"][Store.resolve(data, revision)]["files"]
        recursive = parse_qs(urlsplit(self.path).query).get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        entries, folders = [], set()
        for p, f in sorted(files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                folders.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
            entries.append(self._entry(p, f))
        self._json(200, [{"type": "directory", "path": d, "oid": git_blob_sha1(d.encode()), "size": 0}
                         for d in sorted(folders)] + entries)

    def paths_info(self, body: bytes, repo: str, revision: str) -> None:
        data = self._readable(repo)
        files = data["commits"][Store.resolve(data, revision)]["files"]
        text = body.decode()
        paths = (json.loads(text)["paths"] if text.startswith("{") else parse_qs(text).get("paths", []))
        self._json(200, [self._entry(p, files[p]) for p in paths if p in files])

    def resolve_file(self, body: bytes, repo: str, revision: str, path: str, head: bool = False) -> None:
        data = self._readable(repo)
        sha = Store.resolve(data, revision)
        f = data["commits"][sha]["files"].get(unquote(path))
        if f is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        content = b"" if head else self.server.store.blob_path(f["oid"]).read_bytes()
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": sha, "ETag": f'"{f["oid"]}"',
                   "Accept-Ranges": "bytes"}
        if f["lfs"]:
            headers.update({"X-Linked-Etag": f'"{f["oid"]}"', "X-Linked-Size": f["size"]})
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(f["size"]))
        self.end_headers()
        if not head:
            self.wfile.write(content)
        self.server.log.append({"method": self.command, "path": urlsplit(self.path).path, "status": 200})

    def head_file(self, body: bytes, **kwargs) -> None:
        self.resolve_file(body, head=True, **kwargs)

    # ------------------------------------------------------------------ uploads

    def validate_yaml(self, body: bytes) -> None:
        import yaml

        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---", content, re.S)
        try:
            if match:
                yaml.safe_load(match.group(1))
        except yaml.YAMLError as error:
            self._json(400, {"errors": [{"message": f"invalid YAML metadata: {error}"}], "warnings": []})
            return
        self._json(200, {"errors": [], "warnings": []})

    def preupload(self, body: bytes, repo: str, revision: str) -> None:
        self._require_write()
        data = self.server.store.load(repo)
        files = data["commits"][Store.resolve(data, revision)]["files"]
        out = []
        for item in json.loads(body)["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["path"].endswith(LFS_EXTENSIONS) or item["size"] >= LFS_MIN_SIZE or b"\0" in sample
            existing = files.get(item["path"])
            out.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": existing["oid"] if existing else None})
        self._json(200, {"files": out, "commitOid": Store.resolve(data, revision)})

    def lfs_batch(self, body: bytes, repo: str) -> None:
        self._require_write()
        self.server.store.load(repo)
        objects = []
        for obj in json.loads(body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self.server.store.blob_path(obj["oid"]).is_file():
                href = f"{self.server.url}/_lfs/{obj['oid']}"
                entry["actions"] = {"upload": {"href": href}, "verify": {"href": f"{href}/verify"}}
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects})

    def lfs_put(self, body: bytes, oid: str) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "uploaded content does not match its sha256")
        self.server.store.put_blob(oid, body)
        self._send(200)

    def lfs_verify(self, body: bytes, oid: str) -> None:
        request = json.loads(body)
        path = self.server.store.blob_path(oid)
        if not path.is_file() or path.stat().st_size != request["size"]:
            raise HubError(404, f"LFS object {oid} was not uploaded")
        self._json(200, {})

    def commit(self, body: bytes, repo: str, revision: str) -> None:
        self._require_write()
        store = self.server.store
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        with store.lock:
            data = store.load(repo)
            branch = unquote(revision)
            if branch not in data["refs"]:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            parent = data["refs"][branch]
            if header.get("parentCommit") and header["parentCommit"] != parent:
                raise HubError(412, "A commit has happened since the parent commit")
            files = dict(data["commits"][parent]["files"])
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "file":
                    content = base64.b64decode(value["content"])
                    oid = git_blob_sha1(content)
                    store.put_blob(oid, content)
                    files[value["path"]] = {"oid": oid, "size": len(content), "lfs": False}
                elif key == "lfsFile":
                    if not store.blob_path(value["oid"]).is_file():
                        raise HubError(400, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                    files[value["path"]] = {"oid": value["oid"], "size": value["size"], "lfs": True}
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: f for p, f in files.items() if not p.startswith(prefix)}
            sha = hashlib.sha1(json.dumps([parent, header, files], sort_keys=True).encode()).hexdigest()
            data["commits"][sha] = {"parent": parent, "message": header.get("summary", ""), "files": files,
                                    "date": time.time()}
            data["refs"][branch] = sha
            store.save(repo, data)
        self._json(200, {"success": True, "commitOid": sha, "commitUrl": f"{self.server.url}/{repo}/commit/{sha}",
                         "commitMessage": header.get("summary", "")})

    # ------------------------------------------------------------------ test hooks

    def whoami(self, body: bytes) -> None:
        self._require_write()
        self._json(200, {"type": "user", "name": "user", "fullname": "Test user", "orgs": [],
                         "auth": {"accessToken": {"displayName": "test", "role": "write"}}})

    def arm_fault(self, body: bytes) -> None:
        self.server.faults.append({"times": 1, "status": 500, **json.loads(body)})
        self._json(200, {})

    def request_log(self, body: bytes) -> None:
        self._json(200, list(self.server.log))

    ROUTES = [
        ("POST", r"/api/repos/create", create_repo),
        ("GET", rf"/api/models/{REPO}", repo_info),
        ("GET", rf"/api/models/{REPO}/revision/(?P<revision>[^/]+)", repo_info),
        ("GET", rf"/api/models/{REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?", tree),
        ("POST", rf"/api/models/{REPO}/paths-info/(?P<revision>[^/]+)", paths_info),
        ("POST", rf"/api/models/{REPO}/branch/(?P<branch>[^/]+)", create_branch),
        ("GET", rf"/api/models/{REPO}/refs", list_refs),
        ("POST", rf"/api/models/{REPO}/preupload/(?P<revision>[^/]+)", preupload),
        ("POST", rf"/api/models/{REPO}/commit/(?P<revision>[^/]+)", commit),
        ("POST", r"/api/validate-yaml", validate_yaml),
        ("GET", r"/api/whoami-v2", whoami),
        ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", lfs_batch),
        ("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})", lfs_put),
        ("POST", r"/_lfs/(?P<oid>[0-9a-f]{64})/verify", lfs_verify),
        ("GET", rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", resolve_file),
        ("HEAD", rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", head_file),
        ("POST", r"/_test/fail", arm_fault),
        ("GET", r"/_test/log", request_log),
    ]


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, port: int = 0, tokens: list[str] | None = None):
        super().__init__(("127.0.0.1", port), Handler)
        self.store = Store(root)
        self.tokens = set(tokens or [])
        self.faults: list[dict] = []
        self.log: list[dict] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def take_fault(self, method: str, path: str) -> int | None:
        """The status of an armed fault matching this request (using up one of its times), or None."""
        with self.store.lock:
            for fault in self.faults:
                if fault["times"] > 0 and fault.get("method", method) == method and re.search(fault["path"], path):
                    fault["times"] -= 1
                    return int(fault["status"])
        return None


def serve_in_thread(root: Path, tokens: list[str] | None = None) -> HubServer:
    """Start a server on a free port in a daemon thread; call .shutdown() to stop it."""
    server = HubServer(root, 0, tokens)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--root", type=Path, required=True, help="directory that holds the repositories")
    parser.add_argument("--token", action="append", help="accept only this token for writes (repeatable)")
    args = parser.parse_args()
    server = HubServer(args.root, args.port, args.token)
    print(f"Hub-compatible server at {server.url} (root {args.root}); use HF_ENDPOINT={server.url} "
          "HF_HUB_DISABLE_XET=1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
