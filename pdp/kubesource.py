"""Policies from the Kubernetes API: AgentPolicy, ModelRoute, Tool and ToolCredential
custom resources (policy_source = kubernetes, issue 18).

The resources are materialised as YAML files in a private directory, one per resource at
``<namespace>/<plural>/<name>.yaml``, which the Stack compiles and watches like any policy
directory: the same debounce, the same "a rejected change keeps the previous bundle" rule,
and compile diagnostics ``file:line:col`` that name the resource. After every compile the
outcome goes to each resource's status (conditions Accepted and Ready, the bundle revision).

Plain ``requests`` rather than the kubernetes client: three calls (list, watch, merge-patch
of /status), already a dependency, and no client-side model of the four kinds to keep in
step with the CRDs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import yaml

from compiler.crd import GROUP, VERSION, _plural
from compiler.errors import Diagnostic
from compiler.schema import KINDS
from pdp.config import Settings

log = logging.getLogger("aam.kubesource")

PLURALS = {_plural(kind): kind for kind in sorted(KINDS)}
FIELD_MANAGER = "aam-pdp"
MAX_MESSAGE = 4000  # a condition message is for people; the full list is in the PDP's log


@dataclass
class _Written:
    """A resource as materialised: the file's relative path and the generation it holds."""

    namespace: str
    plural: str
    name: str
    generation: int


class KubeSource:
    """Keeps a policy directory equal to the custom resources the settings select."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tmp = Path(tempfile.mkdtemp(prefix="aam-kube-policies-"))
        self.directory = self._tmp / "policies"
        self.directory.mkdir(mode=0o700)
        self._staging = self._tmp / "staging"  # same filesystem: os.replace is atomic
        self._staging.mkdir(mode=0o700)
        self._lock = threading.Lock()
        self._written: dict[str, _Written] = {}  # relative path -> what the file holds
        self._published: dict[str, tuple[int, str]] = {}  # path -> (generation, revision)
        self._reported: dict[str, dict[str, Any]] = {}  # path -> last status written
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._streams: set[requests.Response] = set()
        self.http = requests.Session()
        self.http.trust_env = False  # no proxy or CA override from the environment
        self.http.verify = settings.kube_ca_file

    # --- the API --------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        # Re-read every time: the kubelet rotates projected service-account tokens.
        token = Path(self.settings.kube_token_file).read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def _collection(self, plural: str, namespace: str | None = None) -> str:
        ns = self.settings.kube_namespace if namespace is None else namespace
        where = f"/namespaces/{ns}" if ns else ""
        return f"{self.settings.kube_api_url.rstrip('/')}/apis/{GROUP}/{VERSION}{where}/{plural}"

    def _params(self) -> dict[str, str]:
        sel = self.settings.kube_label_selector
        return {"labelSelector": sel} if sel else {}

    def _list(self, plural: str) -> tuple[list[dict[str, Any]], str]:
        resp = self.http.get(self._collection(plural), params=self._params(),
                             headers=self._headers(), timeout=30)
        resp.raise_for_status()
        body = resp.json()
        return body.get("items") or [], body["metadata"]["resourceVersion"]

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """List every kind once (the first compile sees the whole set), then watch each."""
        for plural in PLURALS:
            items, rv = self._list(plural)
            self._replace(plural, items)
            t = threading.Thread(target=self._run, args=(plural, rv), daemon=True,
                                 name=f"aam-kube-{plural}")
            self._threads.append(t)
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        with self._lock:  # no file is written after this
            self._stop.set()
            shutil.rmtree(self._tmp, ignore_errors=True)
        for resp in list(self._streams):
            # Shut the socket down rather than close the response: close waits for the
            # lock the watching thread's blocked read holds.
            conn = getattr(resp.raw, "_connection", None) or getattr(resp.raw, "connection", None)
            sock = getattr(conn, "sock", None)
            with contextlib.suppress(OSError, AttributeError):
                sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        for t in self._threads:
            t.join(timeout=1)  # a watch not yet interrupted ends within timeoutSeconds anyway

    def _run(self, plural: str, rv: str) -> None:
        """Watch from rv; on 410 Gone or a broken connection, relist and watch again."""
        while not self._stop.is_set():
            try:
                rv = self._watch(plural, rv)
            except Exception as exc:  # the watch must outlive any API error
                if self._stop.is_set():
                    return
                log.warning("watch of custom resources failed; relisting",
                            extra={"fields": {"plural": plural, "error": str(exc)}})
                rv = ""
            if not rv and not self._stop.wait(0.5):
                try:
                    items, rv = self._list(plural)
                    self._replace(plural, items)
                except Exception as exc:
                    log.warning("list of custom resources failed; retrying",
                                extra={"fields": {"plural": plural, "error": str(exc)}})
                    rv = ""

    def _watch(self, plural: str, rv: str) -> str:
        """Apply events until the server ends the watch; the resourceVersion to resume
        from, or "" when it is gone (410) and only a relist can resume."""
        params = {**self._params(), "watch": "1", "resourceVersion": rv,
                  "allowWatchBookmarks": "true", "timeoutSeconds": "30"}
        with self.http.get(self._collection(plural), params=params, headers=self._headers(),
                           stream=True, timeout=(10, 60)) as resp:
            if resp.status_code == 410:
                return ""
            resp.raise_for_status()
            self._streams.add(resp)
            try:
                for line in resp.iter_lines():
                    if self._stop.is_set():
                        return rv
                    if not line:
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    kind = event.get("type")
                    if kind == "ERROR":
                        return "" if obj.get("code") == 410 else rv
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if kind in ("ADDED", "MODIFIED"):
                        self._put(plural, obj)
                    elif kind == "DELETED":
                        self._delete(self._path(plural, obj))
            finally:
                self._streams.discard(resp)
        return rv

    # --- the directory --------------------------------------------------------------

    @staticmethod
    def _path(plural: str, obj: dict[str, Any]) -> str:
        meta = obj.get("metadata", {})
        return f"{meta.get('namespace', '')}/{plural}/{meta['name']}.yaml"

    def _replace(self, plural: str, items: list[dict[str, Any]]) -> None:
        """A fresh list of one kind: write each, remove what is no longer there."""
        keep = {self._path(plural, o) for o in items}
        for obj in items:
            self._put(plural, obj)
        with self._lock:
            gone = [p for p, w in self._written.items() if w.plural == plural and p not in keep]
        for path in gone:
            self._delete(path)

    def _put(self, plural: str, obj: dict[str, Any]) -> None:
        """Write the resource's file if its content changed (a status write alone changes
        nothing, so the PDP's own status patches do not trigger a recompile)."""
        meta = obj["metadata"]
        doc = {"apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"),
               "kind": obj.get("kind", PLURALS[plural]),
               "metadata": {"name": meta["name"]}, "spec": obj.get("spec")}
        text = yaml.safe_dump(doc, sort_keys=False)
        rel = self._path(plural, obj)
        target = self.directory / rel
        written = _Written(meta.get("namespace", ""), plural, meta["name"],
                           int(meta.get("generation") or 0))
        with self._lock:
            if self._stop.is_set():
                return
            try:
                same = target.read_text() == text
            except OSError:
                same = False
            self._written[rel] = written
            if same:
                return
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._staging, suffix=".yaml")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, target)

    def _delete(self, rel: str) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self._written.pop(rel, None)
            self._published.pop(rel, None)
            self._reported.pop(rel, None)
            (self.directory / rel).unlink(missing_ok=True)

    # --- status ---------------------------------------------------------------------

    def report(self, revision: str | None, diagnostics: Iterable[Diagnostic]) -> None:
        """After a compile: revision is the published bundle's (None: the compile failed,
        the previous bundle stays). Each resource gets Accepted (its own errors, located)
        and Ready (whether its current generation is in the bundle being served)."""
        errors: dict[str, list[str]] = {}
        for d in diagnostics:
            rel = self._relative(d.file)
            if rel is not None:
                errors.setdefault(rel, []).append(f"{rel}:{d.line}:{d.col}: {d.message}")
        with self._lock:
            written = dict(self._written)
            if revision is not None:
                self._published = {p: (w.generation, revision) for p, w in written.items()}
            published = dict(self._published)
        for rel, w in written.items():
            status = self._status(w, errors.get(rel, []), published.get(rel), revision is None)
            if self._reported.get(rel) == status:
                continue
            try:
                self._patch_status(w, status)
                self._reported[rel] = status
            except Exception as exc:  # status is best effort; decisions go on
                log.warning("could not write a custom resource's status",
                            extra={"fields": {"resource": rel, "error": str(exc)}})

    def _relative(self, file: str) -> str | None:
        try:
            return Path(file).resolve().relative_to(self.directory.resolve()).as_posix()
        except ValueError:
            return None

    @staticmethod
    def _status(w: _Written, errors: list[str], published: tuple[int, str] | None,
                rejected: bool) -> dict[str, Any]:
        gen = w.generation
        if errors:
            message = "\n".join(errors)
            accepted = {"type": "Accepted", "status": "False", "reason": "CompileError",
                        "message": message[:MAX_MESSAGE]}
        else:
            accepted = {"type": "Accepted", "status": "True", "reason": "Compiled",
                        "message": ("compiles; another resource's error holds the bundle back"
                                    if rejected else "compiled into the bundle")}
        status: dict[str, Any] = {"observedGeneration": gen}
        if published is not None and published[0] == gen:
            ready = {"type": "Ready", "status": "True", "reason": "Published",
                     "message": f"served in bundle {published[1]}"}
            status["bundleRevision"] = published[1]
        else:
            ready = {"type": "Ready", "status": "False", "reason": "NotPublished",
                     "message": ("this generation is not in the served bundle; "
                                 + ("an earlier one is" if published else "nor any earlier"))}
            if published is not None:
                status["bundleRevision"] = published[1]  # what serves: the earlier generation
        status["conditions"] = [{**c, "observedGeneration": gen} for c in (accepted, ready)]
        return status

    def _patch_status(self, w: _Written, status: dict[str, Any]) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"status": {**status, "conditions": [
            {**c, "lastTransitionTime": now} for c in status["conditions"]]}}
        url = f"{self._collection(w.plural, w.namespace)}/{w.name}/status"
        for attempt in range(3):
            resp = self.http.patch(url, data=json.dumps(body), params={"fieldManager": FIELD_MANAGER},
                                   headers={**self._headers(),
                                            "Content-Type": "application/merge-patch+json"},
                                   timeout=10)
            if resp.status_code == 404:  # deleted meanwhile: nothing to report on
                return
            if resp.status_code < 500 or attempt == 2:
                resp.raise_for_status()
                return
            time.sleep(0.2)
