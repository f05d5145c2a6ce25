"""``aam test``: YAML policy test suites run against the real OPA.

A suite names requests (with context, ledger state and a pinned clock) and
the decision each must get. The policies are compiled into a bundle exactly
as ``aam compile`` does, loaded into a real OPA, and every case is asked
over the Data API with the input assembled by the PDP's own
``Engine.build_input``, so a suite tests what production would decide.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from compiler import source
from compiler.errors import CompileError, Diagnostic
from compiler.pipeline import compile_paths
from compiler.schema import SCHEMA_DIR, _located
from pdp.engine import Engine, Request
from pdp.opa import DECISION_PATH, EngineUnavailable, OpaClient, free_port


class SuiteError(Exception):
    """The suites could not run (bad suite, bad policies, no OPA); carries located diagnostics."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = sorted(set(diagnostics))
        super().__init__("\n".join(str(d) for d in self.diagnostics))


@dataclass(frozen=True)
class Expect:
    decision: str
    reasons: tuple[str, ...] | None = None
    policy: str | None = None
    route: tuple[str, ...] | None = None  # "provider/model@region" in the order to try


@dataclass(frozen=True)
class Case:
    suite: str
    name: str
    where: str  # file:line:col of the case
    input: dict[str, Any]
    expect: Expect

    @property
    def full_name(self) -> str:
        return f"{self.suite}/{self.name}"


@dataclass(frozen=True)
class Suite:
    name: str
    file: str
    policies: tuple[Path, ...]
    cases: tuple[Case, ...]


@dataclass(frozen=True)
class Outcome:
    case: Case
    decision: str
    reasons: tuple[tuple[str, str], ...]  # (code, message)
    policy: str
    seconds: float
    diff: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.diff


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / "testsuite.json").read_text()))


def discover(paths: Sequence[Path]) -> list[Path]:
    """Suite files: YAML under a ``tests/`` directory, or ``*.test.yaml``, or named directly."""
    found: set[Path] = set()
    for p in paths:
        if p.is_dir():
            for f in p.rglob("*"):
                if f.is_file() and f.suffix in (".yaml", ".yml") and (
                        "tests" in f.relative_to(p).parts[:-1] or p.name == "tests"
                        or f.name.endswith((".test.yaml", ".test.yml"))):
                    found.add(f)
        else:
            found.add(p)
    return sorted(found)


_ZERO_RATE = {"requests_last_minute": 0, "tokens_last_minute": 0, "retry_after_s": 0}
FRESH_LEDGER: dict[str, Any] = {
    "budget": {w: {"spent_usd": 0, "reserved_usd": 0, "resets_in_s": 0} for w in ("daily", "monthly")},
    "rate": {**_ZERO_RATE, "route": dict(_ZERO_RATE)},
}


def _build_input(req: dict[str, Any], state: Any, now: str | None) -> dict[str, Any]:
    estimate = req.get("estimate", {})
    doc = Engine.build_input(Engine.__new__(Engine), Request(  # build_input does not use OPA
        spiffe_id=req["workload"], model=req.get("model", ""), tool=req.get("tool", ""),
        action=req.get("action", ""), params=req.get("params", {}), context=req.get("context", {}),
        estimated_tokens=estimate.get("tokens", 0), estimated_cost_usd=float(estimate.get("cost_usd", 0)),
    ))
    doc["identity"] = {**req.get("identity", {}), **doc["identity"]}
    # Without a ``state`` a case runs against a fresh ledger: nothing spent, no recent calls.
    doc["state"] = FRESH_LEDGER if state is None else state
    if now is not None:
        doc["now"] = now
    return doc


def load_suite(path: Path) -> Suite:
    docs, errors = source.load_file(path)
    if errors:
        raise SuiteError(errors)
    if len(docs) != 1:
        raise SuiteError([Diagnostic(str(path), 1, 1, "a test suite file holds exactly one YAML document")])
    doc = docs[0]
    if not isinstance(doc.value, dict):
        raise SuiteError([doc.error((), "a test suite must be a mapping with name and cases")])
    errors = [d for err in _validator().iter_errors(doc.value) for d in _located(doc, err)]
    if errors:
        raise SuiteError(errors)
    v = doc.value
    if "policies" in v:
        policies = tuple((path.parent / p).resolve() for p in v["policies"])
    else:
        policies = ((path.parent.parent if path.parent.name == "tests" else path.parent).resolve(),)
    seen: set[str] = set()
    cases = []
    for i, c in enumerate(v["cases"]):
        line, col = doc.at(("cases", i))
        if c["name"] in seen:
            errors.append(doc.error(("cases", i, "name"), f"duplicate case name {c['name']!r}"))
        seen.add(c["name"])
        e = c["expect"]
        reasons = tuple(sorted(e["reasons"])) if "reasons" in e else None
        route = tuple(e["route"]) if "route" in e else None
        expect = Expect(e["decision"], reasons, e.get("policy"), route)
        cases.append(Case(v["name"], c["name"], f"{doc.file}:{line}:{col}",
                          _build_input(c["request"], c.get("state"), c.get("now")), expect))
    if errors:
        raise SuiteError(errors)
    return Suite(v["name"], doc.file, policies, tuple(cases))


@contextlib.contextmanager
def opa_with_bundle(binary: str, bundle: bytes, timeout_s: float = 20.0) -> Iterator[OpaClient]:
    """A throw-away OPA server on loopback serving one bundle file."""
    with tempfile.TemporaryDirectory(prefix="aam-test-") as tmp:
        path = Path(tmp) / "bundle.tar.gz"
        path.write_bytes(bundle)
        port = free_port()
        log = Path(tmp) / "opa.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [binary, "run", "--server", "--disable-telemetry", "--addr", f"127.0.0.1:{port}",
                 "--log-level", "error", "--bundle", str(path)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        client = OpaClient(f"http://127.0.0.1:{port}", 10.0)
        try:
            deadline = time.monotonic() + timeout_s
            while not client.healthy(bundles=True):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-500:]
                    raise SuiteError([Diagnostic(binary, 1, 1, f"OPA did not start: {tail.strip()}")])
                time.sleep(0.05)
            yield client
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _diff(case: Case, decision: str, reasons: tuple[tuple[str, str], ...], policy: str,
          route: tuple[str, ...] = ()) -> tuple[str, ...]:
    out: list[str] = []
    exp = case.expect
    if decision != exp.decision:
        out.append(f"decision  expected {exp.decision}, got {decision}")
    if exp.reasons is not None:
        got = sorted({code for code, _ in reasons})
        if tuple(got) != exp.reasons:
            out.append(f"reasons   expected [{', '.join(exp.reasons)}], got [{', '.join(got)}]")
            out.extend(f"  - {code}  (expected, missing)" for code in exp.reasons if code not in got)
            out.extend(f"  + {code}: {msg}  (unexpected)" for code, msg in reasons if code not in exp.reasons)
    if exp.policy is not None and policy != exp.policy:
        out.append(f"policy    expected {exp.policy!r}, got {policy!r}")
    if exp.route is not None and route != exp.route:
        out.append(f"route     expected [{', '.join(exp.route)}], got [{', '.join(route)}]")
    return tuple(out)


def _route(result: dict[str, Any]) -> tuple[str, ...]:
    """The allowed chain as "provider/model@region" strings."""
    route = result.get("route") if result.get("allow") is True else None
    targets = route.get("targets") if isinstance(route, dict) else None
    return tuple(f"{t.get('provider')}/{t.get('model')}@{t.get('region', '')}"
                 for t in targets or () if isinstance(t, dict))


def run_case(client: OpaClient, case: Case) -> Outcome:
    start = time.perf_counter()
    try:
        result = client.query(DECISION_PATH, case.input)
    except EngineUnavailable as exc:
        result = {"allow": False, "reasons": [{"code": "engine_unavailable", "message": str(exc)}]}
    if not isinstance(result, dict):
        result = {"allow": False,
                  "reasons": [{"code": "engine_unavailable", "message": "malformed decision"}]}
    reasons = tuple((str(r.get("code")), str(r.get("message", ""))) for r in result.get("reasons", ())
                    if isinstance(r, dict))
    decision = "ALLOW" if result.get("allow") is True and not reasons else "DENY"
    policy = str(result.get("policy", ""))
    return Outcome(case, decision, reasons, policy, time.perf_counter() - start,
                   _diff(case, decision, reasons, policy, _route(result)))


def run(paths: Sequence[Path], opa_binary: str, name_filter: str | None = None) -> list[Outcome]:
    """Load every suite, compile each policy set once, and run the selected cases."""
    suite_files = discover(paths)
    if not suite_files:
        raise SuiteError([Diagnostic(str(paths[0]) if paths else ".", 1, 1, "no test suites found")])
    suites, errors = [], []
    for f in suite_files:
        try:
            suites.append(load_suite(f))
        except SuiteError as exc:
            errors.extend(exc.diagnostics)
    if errors:
        raise SuiteError(errors)
    try:
        pattern = re.compile(name_filter) if name_filter else None
    except re.error as exc:
        raise SuiteError([Diagnostic("--filter", 1, 1, f"invalid regular expression: {exc}")]) from None
    outcomes: list[Outcome] = []
    by_policies: dict[tuple[Path, ...], list[Case]] = {}
    for s in suites:
        selected = [c for c in s.cases if pattern is None or pattern.search(c.full_name)]
        if selected:
            by_policies.setdefault(s.policies, []).extend(selected)
    for policies, cases in by_policies.items():
        try:
            bundle = compile_paths(list(policies))
        except CompileError as exc:
            raise SuiteError(exc.diagnostics) from None
        with opa_with_bundle(opa_binary, bundle.to_tar_gz()) as client:
            outcomes.extend(run_case(client, c) for c in cases)
    return outcomes


def report(outcomes: Sequence[Outcome]) -> str:
    lines = []
    for o in outcomes:
        if o.passed:
            lines.append(f"PASS  {o.case.full_name}")
        else:
            lines.append(f"FAIL  {o.case.full_name}  ({o.case.where})")
            lines.extend(f"      {d}" for d in o.diff)
    failed = sum(not o.passed for o in outcomes)
    lines.append(f"{len(outcomes) - failed} passed, {failed} failed")
    return "\n".join(lines)


def junit_xml(outcomes: Sequence[Outcome]) -> bytes:
    """JUnit XML as CI systems read it: one <testsuite> per suite name."""
    root = ET.Element("testsuites", name="aam test", tests=str(len(outcomes)),
                      failures=str(sum(not o.passed for o in outcomes)))
    by_suite: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_suite.setdefault(o.case.suite, []).append(o)
    for name, items in by_suite.items():
        ts = ET.SubElement(root, "testsuite", name=name, tests=str(len(items)),
                           failures=str(sum(not o.passed for o in items)), errors="0",
                           time=f"{sum(o.seconds for o in items):.6f}")
        for o in items:
            tc = ET.SubElement(ts, "testcase", classname=name, name=o.case.name, time=f"{o.seconds:.6f}",
                               file=o.case.where.rsplit(":", 2)[0])
            if not o.passed:
                failure = ET.SubElement(tc, "failure", message=o.diff[0], type="PolicyMismatch")
                failure.text = "\n".join((o.case.where, *o.diff))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
