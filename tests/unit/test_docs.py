"""The documentation is part of the product: it builds strictly and its examples are true.

- ``mkdocs build --strict`` of docs/ (mkdocs.yml): a broken link, a missing anchor or a page
  left out of the nav fails the build, and so this test. mkdocs is in the dev extra; a
  missing mkdocs fails here, it is never skipped.
- Every fenced ```yaml block of docs/*.md and README.md is an AAM document set or an
  ``aam test`` suite. A page's blocks are one policy set: they are written to one directory
  (suites under its tests/) and compiled together with ``compiler.compile_paths``; a page's
  suites then run against a real OPA with the ``aam test`` machinery. A page can add files of
  the repository to its set with an HTML comment, ``<!-- docs-test: with examples/x.yaml -->``.
  The one way out is a block whose first line starts with ``# fragment`` (a piece of a
  document shown for its shape, or a document that only makes sense with files the page does
  not show); keep those rare. YAML that is not AAM's (OPA's or Envoy's configuration) goes in
  ```yml blocks, which are not compiled.
- The reason-code table (docs/reason-codes.md) is what docs/reason_codes.py generates from the
  code, and every emitted code has a meaning.
- Every setting of pdp.config.Settings is in docs/configuration.md and every ``aam`` command
  in docs/cli.md.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from compiler import CompileError, compile_paths
from compiler.testsuite import SuiteError, report, run

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
FENCE = re.compile(r"^```yaml[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
INDENTED_FENCE = re.compile(r"^[ \t]+```yaml", re.M)
WITH = re.compile(r"<!--\s*docs-test:\s*with\s+(\S+)\s*-->")
API_VERSION = "access.envisionai.dev/v1"


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix() if page.is_relative_to(ROOT) else str(page)


@dataclass(frozen=True)
class Block:
    page: Path
    number: int  # 1-based among the page's yaml blocks
    line: int  # page line of the block's first line of YAML
    text: str

    @property
    def where(self) -> str:
        return f"{_name(self.page)}:{self.line} (yaml block {self.number})"

    @property
    def fragment(self) -> bool:
        return self.text.lstrip().startswith("# fragment")


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [Block(page, i, text.count("\n", 0, m.start(1)) + 1, m.group(1))
            for i, m in enumerate(FENCE.finditer(text), 1)]


def _kind(block: Block) -> str:
    """'policies' or 'suite'; anything else fails with the block's place."""
    try:
        docs = [d for d in yaml.safe_load_all(block.text) if d is not None]
    except yaml.YAMLError as exc:
        pytest.fail(f"{block.where}: not valid YAML: {exc}", pytrace=False)
    if docs and all(isinstance(d, dict) and d.get("apiVersion") == API_VERSION for d in docs):
        return "policies"
    if len(docs) == 1 and isinstance(docs[0], dict) and {"name", "cases"} <= set(docs[0]):
        return "suite"
    pytest.fail(f"{block.where}: a ```yaml block must hold AAM documents (apiVersion {API_VERSION}) "
                "or one aam test suite; start it with '# fragment' if it is a piece of one, or "
                "use ```yml for other YAML", pytrace=False)


def _write_set(page: Path, out: Path) -> tuple[dict[Path, Block], list[Block]]:
    """The page's policy set in ``out`` (suites in out/tests); file -> block, and the suites."""
    out.mkdir(parents=True)
    files: dict[Path, Block] = {}
    suites: list[Block] = []
    for b in blocks(page):
        if b.fragment:
            continue
        if _kind(b) == "suite":
            (out / "tests").mkdir(exist_ok=True)
            path = out / "tests" / f"block-{b.number:02d}.yaml"
            suites.append(b)
        else:
            path = out / f"block-{b.number:02d}.yaml"
        path.write_text(b.text)
        files[path] = b
    for extra in WITH.findall(page.read_text()):
        src = ROOT / extra
        assert src.is_file(), f"{_name(page)}: docs-test: with {extra}: no such file"
        (out / f"with-{src.name}").write_text(src.read_text())
    return files, suites


def _located(message: str, files: dict[Path, Block]) -> str:
    """A diagnostic on a temp file, re-addressed to the page line it came from."""
    for path, b in files.items():
        m = re.match(re.escape(str(path)) + r":(\d+):(\d+): (.*)", message, re.S)
        if m:
            return f"{_name(b.page)}:{b.line + int(m.group(1)) - 1}:{m.group(2)} (yaml block {b.number}): " \
                   f"{m.group(3)}"
    return message


def test_every_page_is_found() -> None:
    assert DOCS / "index.md" in PAGES and len(PAGES) > 10


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_yaml_fences_are_at_the_start_of_a_line(page: Path) -> None:
    """An indented ```yaml (inside a list) would escape the examples test."""
    bad = [page.read_text().count("\n", 0, m.start()) + 1 for m in INDENTED_FENCE.finditer(page.read_text())]
    assert not bad, f"{_name(page)}: indented ```yaml fences at lines {bad}; put them at the line start"


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=_name)
def test_yaml_examples_compile(page: Path, tmp_path: Path) -> None:
    files, _ = _write_set(page, tmp_path / "set")
    if not any(b for p, b in files.items() if p.parent.name != "tests"):
        return  # only suites and fragments: test_yaml_suites_pass compiles what they name
    try:
        compile_paths([tmp_path / "set"])
    except CompileError as exc:
        pytest.fail("\n".join(_located(str(d), files) for d in exc.diagnostics), pytrace=False)


def _pages_with_suites() -> list[Path]:
    return [p for p in PAGES if any(not b.fragment and "\ncases:" in "\n" + b.text for b in blocks(p))]


@pytest.mark.integration
@pytest.mark.parametrize("page", _pages_with_suites(), ids=_name)
def test_yaml_suites_pass(page: Path, tmp_path: Path) -> None:
    """The page's test suites pass against its policy set on a real OPA (as `aam test` runs them)."""
    from tests.servers import opa_binary

    files, suites = _write_set(page, tmp_path / "set")
    assert suites, f"{_name(page)}: no test suite found"
    try:
        outcomes = run([tmp_path / "set" / "tests"], opa_binary())
    except SuiteError as exc:
        pytest.fail("\n".join(_located(str(d), files) for d in exc.diagnostics), pytrace=False)
    failed = [o for o in outcomes if not o.passed]
    assert not failed, f"{_name(page)}: test suites failed:\n" + _located(report(outcomes), files)


def test_examples_test_sees_fragments_and_rejects_foreign_yaml(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("x\n\n```yaml\n# fragment\nspec: {}\n```\n\n```yaml\nservices: {}\n```\n")
    got = blocks(page)
    assert [b.fragment for b in got] == [True, False] and got[1].line == 9
    with pytest.raises(pytest.fail.Exception, match="must hold AAM documents"):
        _kind(got[1])


def test_readme_example_is_the_example_policy() -> None:
    """The README's end-to-end example is what `aam up` serves: examples/finance-analyst-readonly.yaml."""
    served = yaml.safe_load((ROOT / "examples" / "finance-analyst-readonly.yaml").read_text())
    shown = [yaml.safe_load(b.text) for b in blocks(ROOT / "README.md") if not b.fragment]
    assert served in shown, "README.md must show examples/finance-analyst-readonly.yaml unchanged"


def test_readme_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert targets and not missing, f"README.md links to missing files: {missing}"


def test_docs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: it is in the dev extra (pyproject.toml); run scripts/setup",
                    pytrace=False)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr}{proc.stdout}"
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "reason-codes" / "index.html").is_file()


def test_reason_code_table_is_generated_from_the_code() -> None:
    from docs import reason_codes

    found, meanings = reason_codes.scan(), reason_codes.load_meanings()
    assert not reason_codes.problems(found, meanings), "\n".join(reason_codes.problems(found, meanings))
    page = reason_codes.PAGE.read_text()
    assert reason_codes.render(page, found, meanings) == page, \
        "docs/reason-codes.md is stale: run scripts/gen-reason-codes"


def test_reason_code_scan_finds_each_source() -> None:
    from docs import reason_codes

    found = reason_codes.scan()
    for code, source in (("action_denied", "rego/aam/tools.rego"), ("engine_unavailable", "pdp/engine.py"),
                         ("credential_unavailable", "pdp/broker/broker.py"),
                         ("route_not_mapped", "pdp/httpmap.py"), ("not_self", "pdp/identity.py"),
                         ("jwt_svid_invalid", "pdp/identity.py"), ("filter_unavailable", "pdp/extproc.py")):
        assert source in found[code].sources, (code, found.get(code))
    assert not any(s.endswith("_test.rego") for c in found.values() for s in c.sources)


def test_every_setting_is_documented() -> None:
    from dataclasses import fields

    from pdp.config import Settings

    page = (DOCS / "configuration.md").read_text()
    missing = [f.name for f in fields(Settings) if f"`{f.name}`" not in page]
    assert not missing, f"docs/configuration.md does not document: {', '.join(missing)}"


def test_every_cli_command_is_documented() -> None:
    import argparse

    from aam.cli.main import parser

    page = (DOCS / "cli.md").read_text()
    missing = []
    for action in parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
                names = [f"{name} {n}" for a in nested for n in a.choices] or [name]
                missing += [n for n in names if f"`aam {n}" not in page]
    assert not missing, f"docs/cli.md does not document: {', '.join(missing)}"
