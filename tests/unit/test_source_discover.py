"""Which files a policy directory holds: a ConfigMap volume and editor droppings included."""

from __future__ import annotations

import shutil
from pathlib import Path

from compiler import compile_paths
from compiler.source import discover

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def configmap_volume(root: Path) -> Path:
    """What the kubelet writes for a ConfigMap: the files in a timestamped hidden directory,
    ``..data`` linking to it, and a top-level link per file through ``..data``."""
    version = root / "..2026_12_02_00_00_00.123"
    version.mkdir(parents=True)
    for f in EXAMPLES.glob("*.yaml"):
        shutil.copy(f, version / f.name)
    (root / "..data").symlink_to(version.name)
    for f in version.iterdir():
        (root / f.name).symlink_to(Path("..data") / f.name)
    return root


def test_a_configmap_volume_compiles_as_its_files_once(tmp_path: Path) -> None:
    volume = configmap_volume(tmp_path / "policies")
    files = discover([volume])
    assert sorted(f.name for f in files) == sorted(f.name for f in EXAMPLES.glob("*.yaml"))
    assert compile_paths([volume]).revision  # no "duplicate AgentPolicy name"


def test_hidden_files_are_not_policies(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "tools.yaml", tmp_path / "tools.yaml")
    (tmp_path / ".tools.yaml.swp.yaml").write_text("not: a policy")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.yaml").write_text("not: a policy")
    assert [f.name for f in discover([tmp_path])] == ["tools.yaml"]
