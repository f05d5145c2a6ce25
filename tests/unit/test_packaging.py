"""What a built wheel carries: an installed aam compiles bundles with the whole Rego library."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from compiler.bundle import rego_library

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_rego_library_and_schemas(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path)], check=True)
    (wheel,) = tmp_path.glob("agent_access_manager-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    library = {f"compiler/rego/{name}" for name in rego_library()}
    assert library and library <= names, sorted(library - names)
    assert "compiler/schemas/agentpolicy.json" in names
