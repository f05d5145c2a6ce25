"""The generated gRPC stubs on disk match proto/ (regenerate: scripts/gen-proto)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "scripts" / "gen-proto"), str(tmp_path)], check=True,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert fresh, "protoc generated nothing"
    stale = [str(p) for p in fresh if (ROOT / p).read_bytes() != (tmp_path / p).read_bytes()]
    assert not stale, f"stale generated stubs, run scripts/gen-proto: {stale}"
