"""ext_authz Check only: AAM's Authorization service against opa-envoy-plugin and opa-extauthz.

    .venv/bin/python -m bench.extauthz [bench.run options, e.g. --quick --opa-envoy-plugin PATH]

The same as ``bench.run --only "ext_authz Check" --no-scale --no-profile``: the
scenarios, the baselines' stacks and the tables live in bench.run, scenarios.py and
targets.py. Without an opa-envoy-plugin binary (the Go module proxy refuses the
module, so this repository does not build it) AAM is compared with opa-extauthz
alone, which scripts/setup builds from bench/opa_extauthz.
"""

from __future__ import annotations

import sys
from typing import TextIO

from bench import run


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    rest = sys.argv[1:] if argv is None else argv
    return run.main(["--only", "ext_authz Check", "--no-scale", "--no-profile", *rest], out)


if __name__ == "__main__":
    sys.exit(main())
