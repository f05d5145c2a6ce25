"""Where the benchmark's external programs live (built by scripts/setup)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from pdp.config import DEFAULT_TOOLS_DIR


class ToolMissing(RuntimeError):
    """A program the benchmark needs is not installed; the message says how to get it."""


def tool(name: str) -> str:
    """Path of a tool: the tools dir first (scripts/setup), then the venv, then PATH."""
    for cand in (DEFAULT_TOOLS_DIR / "bin" / name, Path(sys.executable).parent / name):
        if os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which(name)
    if found:
        return found
    raise ToolMissing(f"{name} not found in {DEFAULT_TOOLS_DIR / 'bin'} or PATH; run scripts/setup")
