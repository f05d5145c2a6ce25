"""Regenerate docs/img/console.png: the console's workload page after a few ordinary
decisions (the browser test's stack, tests/e2e/test_console_browser.py, without its XSS
payloads).

Starts PostgreSQL and OpenBao (for the credential broker, as the test does), a stack on a
SQLite ledger with the console on loopback, makes the decisions, opens
/workload?id=spiffe://prod/agent/analyst in Debian's chromium and captures it. With
Pillow importable (it is not a project dependency: ``pip install --target /tmp/pil pillow``
then ``PYTHONPATH=/tmp/pil``) the capture is quantized to 128 colours to stay small.

    .venv/bin/python scripts/console_screenshot.py [--out docs/img/console.png]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from aam.v1 import pdp_pb2  # noqa: E402
from tests import servers, vaultsetup  # noqa: E402
from tests.e2e.test_console_browser import ANALYST, ANALYST_YAML, CRM, chromium  # noqa: E402
from tests.integration.pdp import request, running_stack, stub  # noqa: E402


def decide(stack: object) -> None:
    channel, pdp = stub(stack, gateway=True)
    with channel:
        pdp.Authorize(request(CRM, tool="salesforce.accounts", action="read"), timeout=10)
        pdp.Authorize(request(ANALYST, tool="web.search", action="query",
                              params={"q": "quarterly revenue by region"}), timeout=10)
        pdp.Authorize(request(ANALYST, tool="web.search", action="delete"), timeout=10)
        for tokens, cost in ((2000, 1.25), (1200, 0.74)):
            d = pdp.Authorize(request(ANALYST, model="reasoning-high", estimated_tokens=tokens),
                              timeout=10)
            assert d.decision == pdp_pb2.DECISION_ALLOW
            pdp.RecordUsage(pdp_pb2.RecordUsageRequest(decision_id=d.decision_id, tokens=tokens,
                                                       cost_usd=cost), timeout=10)
        pdp.Authorize(request(ANALYST, tool="web.search", action="query",
                              params={"q": "competitor pricing 2026"}), timeout=10)


def shrink(png: bytes) -> bytes:
    try:
        from PIL import Image
    except ImportError:
        print("Pillow not importable: the capture is kept as chromium wrote it", file=sys.stderr)
        return png
    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128, method=Image.Quantize.FASTOCTREE)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "console.png"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="aam-screenshot-") as tmp, \
            servers.run_postgres() as pg, servers.run_openbao() as bao:
        work = Path(tmp)
        (work / "vault").mkdir()
        vault = vaultsetup.setup(bao, pg, work / "vault")
        (work / "policies").mkdir()
        pol = vaultsetup.policies(work / "policies")
        shutil.copy(ROOT / "examples" / "model-routes.yaml", pol / "model-routes.yaml")
        (pol / "analyst.yaml").write_text(ANALYST_YAML)
        with running_stack(pol, console_addr="127.0.0.1:0", **vault.settings()) as stack:
            decide(stack)
            assert stack.console is not None
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
                page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
                page.goto(stack.console.url.rstrip("/") + f"/workload?id={ANALYST}")
                page.wait_for_function("document.querySelector('img.chart')?.complete")
                png = page.screenshot(full_page=True, type="png")
                browser.close()
    data = shrink(png)
    Path(args.out).write_bytes(data)
    print(f"{args.out}: {len(data):,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
