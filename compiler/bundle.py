"""OPA bundles: deterministic tarballs with a content-hash revision.

Same input, same bytes: files are sorted, tar headers carry no time or owner,
gzip carries no timestamp. The revision is a SHA-256 over every file the
bundle serves, and it is also written into the data so each decision can say
which revision produced it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = "aam"
DATA_PATH = f"{ROOT}/compiled/data.json"
# A link to the repository's rego/ (compiler/rego -> ../rego), so a built wheel carries the
# library as package data and a source checkout reads the same files.
REGO_DIR = Path(__file__).resolve().parent / "rego"


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def rego_library(rego_dir: Path = REGO_DIR) -> dict[str, bytes]:
    """The hand-written Rego modules (tests excluded), keyed by bundle path."""
    return {
        f.relative_to(rego_dir).as_posix(): f.read_bytes()
        for f in sorted(rego_dir.rglob("*.rego"))
        if not f.name.endswith("_test.rego")
    }


@dataclass(frozen=True)
class Bundle:
    revision: str
    files: dict[str, bytes] = field(repr=False)

    @classmethod
    def build(cls, data: dict[str, Any], modules: dict[str, bytes]) -> Bundle:
        digest = hashlib.sha256()
        for name in sorted(modules):
            digest.update(name.encode() + b"\0" + modules[name] + b"\0")
        digest.update(canonical_json(data))
        revision = digest.hexdigest()
        files = dict(modules)
        files[DATA_PATH] = canonical_json({**data, "revision": revision})
        files[".manifest"] = canonical_json({"revision": revision, "roots": [ROOT]})
        return cls(revision, files)

    def to_tar_gz(self) -> bytes:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(self.files):
                body = self.files[name]
                info = tarfile.TarInfo("/" + name)
                info.size = len(body)
                info.mode = 0o644
                info.mtime = 0
                tar.addfile(info, io.BytesIO(body))
        out = io.BytesIO()
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
            gz.write(raw.getvalue())
        return out.getvalue()
