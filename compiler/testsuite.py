"""``aam test``: YAML policy test suites run against the real OPA.

A suite names requests (with context, ledger state and a pinned clock) and
the decision each must get. The policies are compiled into a bundle exactly
as ``aam compile`` does, loaded into a real OPA, and every case is asked
over the Data API with the input assembled by the PDP's own
``Engine.build_input``, so a suite tests what production would decide.
"""

from __future__ import annotations

import contextlib
import copy
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
from compiler.errors import CompileError, Diagnostic, closest, did_you_mean
from compiler.model import PolicySet
from compiler.pipeline import build, load
from compiler.schema import SCHEMA_DIR, _located
from pdp.engine import Engine, Request
from pdp.opa import DECISION_PATH, EXPLAIN_PATH, EngineUnavailable, OpaClient, free_port


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
    state: dict[str, Any] | None = None  # as the suite wrote it, before defaults

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
    # On a failure, what the decision actually was and why: its reasons (with
    # where the rule is written), what allowed it, its route, the state used.
    detail: tuple[str, ...] = field(default=())

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


def with_defaults(state: dict[str, Any]) -> dict[str, Any]:
    """A hand-written state completed with a fresh ledger's values.

    The PDP always sends every field (pdp/ledger/limits.py ``state``); a suite
    writes only what matters to the case, e.g. ``{budget: {daily: {spent_usd:
    4.9}}}``. Sent as written, the missing ``reserved_usd`` left the budget
    rule undefined, so the case was silently allowed. Whatever is left out is
    what a fresh ledger says: nothing reserved, spent or counted."""
    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return out
    return merge(copy.deepcopy(FRESH_LEDGER), state)


def _build_input(req: dict[str, Any], state: Any, now: str | None) -> dict[str, Any]:
    estimate = req.get("estimate", {})
    doc = Engine.build_input(Request(
        spiffe_id=req["workload"], model=req.get("model", ""), tool=req.get("tool", ""),
        action=req.get("action", ""), params=req.get("params", {}), context=req.get("context", {}),
        estimated_tokens=estimate.get("tokens", 0), estimated_cost_usd=float(estimate.get("cost_usd", 0)),
    ))
    doc["identity"] = {**req.get("identity", {}), **doc["identity"]}
    # Without a ``state`` a case runs against a fresh ledger: nothing spent, no recent calls.
    doc["state"] = FRESH_LEDGER if state is None else with_defaults(state)
    if now is not None:
        doc["now"] = now
    return doc


def load_suite(path: Path) -> Suite:
    suite, errors, _ = _load_suite(path)
    if errors or suite is None:
        raise SuiteError(errors)
    return suite


def _policies(path: Path, v: Any) -> tuple[Path, ...]:
    """The policy paths a suite runs against (also for a suite with errors, so that
    the policies' own errors are reported in the same run)."""
    named = v.get("policies") if isinstance(v, dict) else None
    if isinstance(named, list) and named and all(isinstance(p, str) and p for p in named):
        return tuple((path.parent / p).resolve() for p in named)
    return ((path.parent.parent if path.parent.name == "tests" else path.parent).resolve(),)


def _load_suite(path: Path) -> tuple[Suite | None, list[Diagnostic], tuple[Path, ...] | None]:
    """The suite (None if it has errors), every error it has, and its policy paths."""
    docs, errors = source.load_file(path)
    if errors:
        return None, errors, None
    if len(docs) != 1:
        return None, [Diagnostic(str(path), 1, 1, "a test suite file holds exactly one YAML document")], None
    doc = docs[0]
    if not isinstance(doc.value, dict):
        return None, [doc.error((), "a test suite must be a mapping with name and cases")], None
    v = doc.value
    errors = [d for err in _validator().iter_errors(v) for d in _located(doc, err)]
    seen: set[str] = set()
    for i, c in enumerate(v.get("cases") if isinstance(v.get("cases"), list) else ()):
        name = c.get("name") if isinstance(c, dict) else None
        if isinstance(name, str) and name in seen:
            errors.append(doc.error(("cases", i, "name"), f"duplicate case name {name!r}"))
        if isinstance(name, str):
            seen.add(name)
    policies = _policies(path, v)
    if errors:
        return None, errors, policies
    cases = []
    for i, c in enumerate(v["cases"]):
        line, col = doc.at(("cases", i))
        e = c["expect"]
        reasons = tuple(sorted(e["reasons"])) if "reasons" in e else None
        route = tuple(e["route"]) if "route" in e else None
        expect = Expect(e["decision"], reasons, e.get("policy"), route)
        cases.append(Case(v["name"], c["name"], f"{doc.file}:{line}:{col}",
                          _build_input(c["request"], c.get("state"), c.get("now")), expect, c.get("state")))
    return Suite(v["name"], doc.file, policies, tuple(cases)), [], policies


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


@dataclass(frozen=True)
class Known:
    """What the compiled policy set names, for "did you mean" on a failing case and
    for printing where a rule is written."""

    workloads: frozenset[str] = frozenset()
    models: dict[str, tuple[str, ...]] = field(default_factory=dict)  # workload -> models.allow
    tools: dict[str, tuple[str, ...]] = field(default_factory=dict)  # workload -> granted resources
    files: dict[str, str] = field(default_factory=dict)  # name in the source map -> file as found

    @classmethod
    def of(cls, ps: PolicySet) -> Known:
        enforced = [p for p in ps.policies if not p.shadow]
        docs = [p.doc for p in enforced] + [r.doc for r in ps.routes]
        return cls(frozenset(p.workload for p in enforced),
                   {p.workload: p.models for p in enforced},
                   {p.workload: tuple(g.resource for g in p.tools) for p in enforced},
                   {d.source_name: d.file for d in docs})

    def where(self, at: object) -> str:
        """``name:line:col`` of the source map as a path the reader can open."""
        if not isinstance(at, str) or at.count(":") < 2:
            return ""
        name, line, col = at.rsplit(":", 2)
        return f"{self.files.get(name, name)}:{line}:{col}"

    def hint(self, code: str, request: dict[str, Any]) -> str:
        workload = str(request.get("identity", {}).get("spiffe_id", ""))
        if code == "no_policy":
            return _near_workload(workload, self.workloads)
        if code == "model_not_allowed":
            return did_you_mean(request.get("model"), self.models.get(workload, ()))
        if code == "tool_not_granted":
            return did_you_mean(request.get("tool"), self.tools.get(workload, ()))
        return ""


def _near_workload(workload: str, known: frozenset[str]) -> str:
    """SPIFFE IDs share long prefixes, which make any two look alike: compare the
    last path segment among IDs with the same trust domain and parent path."""
    parent, _, leaf = workload.rpartition("/")
    peers = {k.rpartition("/")[2]: k for k in known if k.rpartition("/")[0] == parent}
    match = closest(leaf, peers) if parent else None
    return f'; did you mean "{peers[match]}"?' if match is not None else ""


_ALLOWING = ("models.allow", "models.list", "tools.actions", "mcp.session")


def _flat(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict) and value:
        return [x for k, v in value.items() for x in _flat(v, f"{prefix}.{k}" if prefix else str(k))]
    return [f"{prefix}={json.dumps(value)}"]


def _detail(case: Case, decision: str, reasons: tuple[tuple[str, str], ...], route: tuple[str, ...],
            diff: tuple[str, ...], matched: Any, known: Known) -> tuple[str, ...]:
    """The actual decision behind a failure, under its diff lines."""
    exp = case.expect
    rules = [m for m in matched if isinstance(m, dict)] if isinstance(matched, list) else []
    at = {(m.get("rule"), m.get("source")): known.where(m.get("at")) for m in rules}
    shown = ({code for code, _ in reasons if code not in exp.reasons}
             if any(d.startswith("reasons") for d in diff) and exp.reasons is not None else set())
    out = []
    for code, msg in reasons:
        if code in shown:
            continue
        where = at.get((f"deny.{code}", msg), "")
        out.append(f"reason    {code}: {msg}{known.hint(code, case.input)}"
                   + (f"  ({where})" if where else ""))
    if decision == "ALLOW":
        for m in rules:
            if m.get("rule") in _ALLOWING:
                where = at.get((m.get("rule"), m.get("source")), "")
                out.append(f"allowed   by {m.get('source')}" + (f"  ({where})" if where else ""))
        if route and not any(d.startswith("route") for d in diff):
            out.append(f"route     {', '.join(route)}")
    if case.state is not None:
        out.append(f"state     {', '.join(_flat(case.state)) or '{}'} (the rest: a fresh ledger)")
    return tuple(out)


def run_case(client: OpaClient, case: Case, known: Known | None = None) -> Outcome:
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
    route = _route(result)
    diff = _diff(case, decision, reasons, policy, route)
    seconds = time.perf_counter() - start
    detail: tuple[str, ...] = ()
    if diff:  # a second query, on failures only: which rules matched, and where they are written
        try:
            explained = client.query(EXPLAIN_PATH, case.input)
        except EngineUnavailable:
            explained = None
        matched = explained.get("matched") if isinstance(explained, dict) else None
        detail = _detail(case, decision, reasons, route, diff, matched, known or Known())
    return Outcome(case, decision, reasons, policy, seconds, diff, detail)


def run(paths: Sequence[Path], opa_binary: str, name_filter: str | None = None) -> list[Outcome]:
    """Load every suite, compile each policy set once, and run the selected cases.

    Every error is reported in one run: those of every suite, and those of the
    policies each suite runs against (also when the suite itself has errors)."""
    suite_files = discover(paths)
    if not suite_files:
        raise SuiteError([Diagnostic(str(paths[0]) if paths else ".", 1, 1, "no test suites found")])
    try:
        pattern = re.compile(name_filter) if name_filter else None
    except re.error as exc:
        raise SuiteError([Diagnostic("--filter", 1, 1, f"invalid regular expression: {exc}")]) from None
    errors: list[Diagnostic] = []
    by_policies: dict[tuple[Path, ...], list[Case]] = {}
    for f in suite_files:
        suite, suite_errors, policies = _load_suite(f)
        errors.extend(suite_errors)
        if suite_errors and policies is not None:
            by_policies.setdefault(policies, [])  # compiled for its errors only
        if suite is not None:
            selected = [c for c in suite.cases if pattern is None or pattern.search(c.full_name)]
            if selected:
                by_policies.setdefault(suite.policies, []).extend(selected)
    loaded: dict[tuple[Path, ...], PolicySet] = {}
    for policies in by_policies:
        try:
            loaded[policies] = load(list(policies))
        except CompileError as exc:
            errors.extend(exc.diagnostics)
    if errors:
        raise SuiteError(errors)
    outcomes: list[Outcome] = []
    for policies, cases in by_policies.items():
        if not cases:
            continue
        ps = loaded[policies]
        known = Known.of(ps)
        with opa_with_bundle(opa_binary, build(ps).to_tar_gz()) as client:
            outcomes.extend(run_case(client, c, known) for c in cases)
    return outcomes


def report(outcomes: Sequence[Outcome]) -> str:
    lines = []
    for o in outcomes:
        if o.passed:
            lines.append(f"PASS  {o.case.full_name}")
        else:
            lines.append(f"FAIL  {o.case.full_name}  ({o.case.where})")
            lines.extend(f"      {d}" for d in (*o.diff, *o.detail))
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
                failure.text = "\n".join((o.case.where, *o.diff, *o.detail))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
