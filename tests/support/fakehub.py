"""A small fake Hugging Face Hub that huggingface_hub 2.4 downloads from and uploads to.

No registry ships a local Hub, and respx cannot intercept httpx2 (which huggingface_hub uses), so the tests run
this real HTTP server (see /work/shared/research/services.md §3). Repos live in memory, blobs on disk under `store`.

Download: `HEAD|GET /{prefix}{repo}/resolve/{rev}/{path}` with X-Repo-Commit, ETag (git sha1 for regular files,
sha256 for LFS ones) and Content-Length; Range works (Starlette's FileResponse). Errors are 404s with
`X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound`. Everything is routed on the *raw* path, so
percent-encoded file names (`my%20file.png`) and revisions (`refs%2Fpr%2F1`) work.
Also: `/api/{type}s/{repo}[/revision/{rev}]` and `/api/{type}s/{repo}/tree/{rev}` (repo_info, snapshot_download).

Upload (`HfApi(endpoint=url).upload_file/create_commit/create_repo`): preupload answers "regular" for files smaller
than `lfs_threshold` (default 10 MiB, like the Hub) and "lfs" for larger ones. LFS files go through the legacy
batch API ("basic" transfer: PUT to /_lfs/{oid}, then verify), which needs `HF_HUB_DISABLE_XET=1` on the client
(or `huggingface_hub.constants.HF_HUB_DISABLE_XET = True`); with xet on, the xet-write-token route answers 501 with
that advice. Regular files travel base64-encoded inside the commit NDJSON and work with xet on.

Auth (`token`): missing bearer -> 401 + X-Error-Code RepoNotFound (huggingface_hub: RepositoryNotFoundError); wrong
bearer -> 401 "Invalid credentials in Authorization header" (HfHubHTTPError, status 401), as the real Hub answers.
LFS part PUTs are presigned-style and need no token. `/_admin/*` is never authenticated nor logged:
`PUT /_admin/file?repo_id=&path=&revision=&repo_type=` seeds a file, `GET|DELETE /_admin/requests` reads/clears the
request log (method, raw path, authorization header).

Run: `python -m tests.support.fakehub --port P --store DIR [--token T] [--lfs-threshold BYTES]` from the repo root.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

PREFIXES = {"datasets": "dataset", "spaces": "space"}  # URL prefix -> repo type; models have none
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
HEX40 = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Entry:
    sha256: str
    size: int
    git_oid: str
    lfs: bool

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch -> commit
    commits: dict[str, dict[str, Entry]] = field(default_factory=dict)  # commit -> tree

    def resolve(self, rev: str) -> str | None:
        return self.refs.get(rev) or (rev if rev in self.commits else None)


def error(status: int, code: str | None, message: str, **headers: str) -> JSONResponse:
    extra = {"X-Error-Message": message, **headers} | ({"X-Error-Code": code} if code else {})
    return JSONResponse({"error": message}, status, headers=extra)


class Hub:
    def __init__(self, store: Path, token: str | None, lfs_threshold: int) -> None:
        self.store, self.token, self.lfs_threshold = store, token, lfs_threshold
        (store / "blobs").mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[dict[str, str | None]] = []
        self.pending_lfs: dict[str, int] = {}  # oid -> size announced in a batch request
        self._counter = 0

    def blob(self, sha256: str) -> Path:
        return self.store / "blobs" / sha256

    async def save_blob(self, request: Request) -> tuple[str, int, str]:
        """Stream a request body to the blob store; returns (sha256, size, git sha1)."""
        sha256, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.store)
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                sha256.update(chunk)
                size += len(chunk)
                out.write(chunk)
        return self.store_file(Path(tmp), sha256.hexdigest(), size)

    def store_file(self, tmp: Path, sha256: str, size: int) -> tuple[str, int, str]:
        git = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
        with open(tmp, "rb") as f:
            while chunk := f.read(1 << 20):
                git.update(chunk)
        os.replace(tmp, self.blob(sha256))
        return sha256, size, git.hexdigest()

    def commit(self, repo: Repo, branch: str, changes: dict[str, Entry | None], parent: str | None = None) -> str:
        """A new commit on `branch` (created from `parent` or main when new); None in `changes` deletes a path."""
        base = parent or repo.refs.get(branch) or repo.refs.get("main")
        tree = dict(repo.commits[base]) if base else {}
        for path, entry in changes.items():
            if entry is None:
                tree = {p: e for p, e in tree.items() if p != path and not p.startswith(path.rstrip("/") + "/")}
            else:
                tree[path] = entry
        self._counter += 1
        sha = hashlib.sha1(f"{base}:{self._counter}:{sorted(tree)}".encode(), usedforsecurity=False).hexdigest()
        repo.commits[sha] = tree
        repo.refs[branch] = sha
        return sha

    def create_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos[(repo_type, repo_id)] = Repo()
        self.commit(repo, "main", {})
        return repo


def create_app(store: Path, token: str | None = None, lfs_threshold: int = 10 * 1024 * 1024) -> FastAPI:
    hub = Hub(store, token, lfs_threshold)
    app = FastAPI(title="fake Hugging Face hub")
    app.state.hub = hub

    @app.put("/_admin/file")
    async def admin_file(request: Request, repo_id: str, path: str, revision: str = "main", repo_type: str = "model"):
        sha256, size, git_oid = await hub.save_blob(request)
        repo = hub.repos.get((repo_type, repo_id)) or hub.create_repo(repo_type, repo_id)
        entry = Entry(sha256, size, git_oid, size >= hub.lfs_threshold)
        return {"commit": hub.commit(repo, revision, {path: entry})}

    @app.get("/_admin/requests")
    async def admin_requests() -> list[dict[str, str | None]]:
        return hub.requests

    @app.delete("/_admin/requests")
    async def admin_clear() -> dict[str, bool]:
        hub.requests.clear()
        return {"ok": True}

    @app.api_route("/{rest:path}", methods=["GET", "HEAD", "POST", "PUT"])
    async def dispatch(request: Request) -> Response:
        raw = request.scope["raw_path"].decode("latin-1")
        auth = request.headers.get("authorization")
        hub.requests.append({"method": request.method, "path": raw, "authorization": auth})
        parts = raw.strip("/").split("/")
        if parts[0] == "_lfs" and len(parts) == 2 and request.method == "PUT":  # presigned-style: no token
            return await lfs_put(request, parts[1])
        if hub.token is not None and auth != f"Bearer {hub.token}":
            if auth is None:
                return error(401, "RepoNotFound", "Invalid username or password.")
            return error(401, None, "Invalid credentials in Authorization header")
        if parts[0] == "_lfs" and parts[1:] == ["verify"]:
            body = await request.json()
            ok = hub.blob(body["oid"]).exists()
            return JSONResponse({"ok": ok}, 200 if ok else 404)
        if parts[0] == "api":
            return await api(request, parts[1:])
        repo_type = PREFIXES.get(parts[0], "model")
        parts = parts[1:] if parts[0] in PREFIXES else parts
        for n in (2, 1):  # "ns/name/resolve/..." or a namespace-less "name/resolve/..."
            if len(parts) > n + 1 and parts[n] == "resolve" and request.method in ("GET", "HEAD"):
                return resolve(repo_type, "/".join(parts[:n]), unquote(parts[n + 1]), unquote("/".join(parts[n + 2 :])))
        if raw.endswith(".git/info/lfs/objects/batch") and request.method == "POST":
            return await lfs_batch(request)
        return error(404, None, f"fake hub: no route for {request.method} {raw}")

    def resolve(repo_type: str, repo_id: str, rev: str, path: str) -> Response:
        repo = hub.repos.get((repo_type, repo_id))
        if repo is None:
            return error(404, "RepoNotFound", "Repository not found")
        commit = repo.resolve(rev)
        if commit is None:
            return error(404, "RevisionNotFound", "Invalid rev id: " + rev)
        entry = repo.commits[commit].get(path)
        if entry is None:
            return error(404, "EntryNotFound", "Entry not found", **{"X-Repo-Commit": commit})
        headers = {"X-Repo-Commit": commit, "ETag": f'"{entry.etag}"', "Accept-Ranges": "bytes"}
        return FileResponse(hub.blob(entry.sha256), headers=headers, media_type="application/octet-stream")

    async def api(request: Request, parts: list[str]) -> Response:
        if parts[:2] == ["repos", "create"] and request.method == "POST":
            body = await request.json()
            repo_type = body.get("type") or "model"
            if not body.get("organization"):  # the real Hub would use the token's user; clients need "ns/name"
                return error(400, None, "fake hub: create repos as 'namespace/name' (there are no users here)")
            repo_id = f"{body['organization']}/{body['name']}"
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            url = f"{str(request.base_url).rstrip('/')}/{prefix}{repo_id}"
            if (repo_type, repo_id) in hub.repos:
                return JSONResponse({"error": "You already created this repo", "url": url}, 409)
            hub.create_repo(repo_type, repo_id)
            return JSONResponse({"url": url, "name": repo_id})
        if not parts or parts[0] not in API_TYPES:
            return error(404, None, "fake hub: unknown API route")
        repo_type, rest = API_TYPES[parts[0]], parts[1:]
        n = 2 if (repo_type, "/".join(rest[:2])) in hub.repos else 1  # "ns/name" or a namespace-less "name"
        repo_id, action = "/".join(rest[:n]), rest[n : n + 1]
        repo = hub.repos.get((repo_type, repo_id))
        if repo is None:
            return error(404, "RepoNotFound", "Repository not found")
        rev = unquote(rest[n + 1]) if len(rest) > n + 1 else "main"
        if action and action[0] == "xet-write-token":
            return error(501, None, "fake hub: xet is not supported; set HF_HUB_DISABLE_XET=1")
        commit = repo.resolve(rev)
        if commit is None:
            return error(404, "RevisionNotFound", "Invalid rev id: " + rev)
        tree = repo.commits[commit]
        if action and action[0] == "preupload":
            files = (await request.json())["files"]
            modes = [
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if f["size"] >= hub.lfs_threshold else "regular",
                    "shouldIgnore": False,
                    "oid": tree[f["path"]].etag if f["path"] in tree else None,
                }
                for f in files
            ]
            return JSONResponse({"files": modes})
        if action and action[0] == "commit":
            return await commit_ndjson(request, repo, rev, repo_type, repo_id)
        if action and action[0] == "tree":
            return JSONResponse([tree_item(p, e) for p, e in sorted(tree.items())])
        siblings = [{"rfilename": p} for p in sorted(tree)]
        return JSONResponse({"id": repo_id, "sha": commit, "siblings": siblings, "private": hub.token is not None})

    def tree_item(path: str, entry: Entry) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "file", "path": path, "size": entry.size, "oid": entry.git_oid}
        if entry.lfs:
            item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": 134}
        return item

    async def commit_ndjson(request: Request, repo: Repo, branch: str, repo_type: str, repo_id: str) -> Response:
        if branch not in repo.refs:
            return error(404, "RevisionNotFound", f"Invalid rev id: {branch} (commits go to branches)")
        changes: dict[str, Entry | None] = {}
        parent: str | None = None
        for line in (await request.body()).splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                parent = value.get("parentCommit")
            elif key == "file":
                data = base64.b64decode(value["content"])
                fd, tmp = tempfile.mkstemp(dir=hub.store)
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                sha256, size, git_oid = hub.store_file(Path(tmp), hashlib.sha256(data).hexdigest(), len(data))
                changes[value["path"]] = Entry(sha256, size, git_oid, False)
            elif key == "lfsFile":
                if not hub.blob(value["oid"]).exists():
                    return error(400, None, f"LFS object {value['oid']} was never uploaded")
                git_oid = hashlib.sha1(f"lfs:{value['oid']}".encode(), usedforsecurity=False).hexdigest()
                changes[value["path"]] = Entry(value["oid"], value["size"], git_oid, True)
            elif key in ("deletedFile", "deletedFolder"):
                changes[value["path"]] = None
        if parent is not None and parent not in repo.commits:
            return error(404, "RevisionNotFound", f"Invalid parent commit {parent}")
        sha = hub.commit(repo, branch, changes, parent)
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{str(request.base_url).rstrip('/')}/{prefix}{repo_id}/commit/{sha}"
        return JSONResponse({"commitOid": sha, "commitUrl": url, "pullRequestUrl": None})

    async def lfs_batch(request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        objects = []
        for obj in (await request.json())["objects"]:
            oid, size = obj["oid"], obj["size"]
            if hub.blob(oid).exists():
                objects.append({"oid": oid, "size": size})
                continue
            hub.pending_lfs[oid] = size
            actions = {"upload": {"href": f"{base}/_lfs/{oid}"}, "verify": {"href": f"{base}/_lfs/verify"}}
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        return JSONResponse({"transfer": "basic", "objects": objects}, media_type="application/vnd.git-lfs+json")

    async def lfs_put(request: Request, oid: str) -> Response:
        if oid not in hub.pending_lfs:
            return error(403, None, "fake hub: no LFS upload was announced for this oid")
        sha256, size, _ = await hub.save_blob(request)
        if sha256 != oid or size != hub.pending_lfs[oid]:
            hub.blob(sha256).unlink(missing_ok=True)
            return error(400, None, "LFS object does not match its oid/size")
        del hub.pending_lfs[oid]
        return Response(status_code=200, headers={"ETag": f'"{oid}"'})

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--token")
    parser.add_argument("--lfs-threshold", type=int, default=10 * 1024 * 1024)
    args = parser.parse_args()
    app = create_app(args.store, args.token, args.lfs_threshold)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
