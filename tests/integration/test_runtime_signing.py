"""The bundle the PDP serves to its OPA is signed, and the real OPA refuses any other.

One stack (managed OPA, ephemeral ES256 key, as ``aam up``) for the module:
every case publishes through the PDP's own bundle endpoint, waits for OPA's
verdict in its log, checks which revision decisions come from, then edits a
policy and hot-reloads (``Stack.reload``) so the next case starts from a
freshly re-signed revision.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator
from itertools import count

import jwt
import pytest
import requests

from aam.v1 import pdp_pb2
from compiler import Bundle
from compiler.bundle import DATA_PATH
from pdp.bundles import Signer
from pdp.bundlesigner import BundleSigner
from pdp.stack import Stack
from tests.integration.pdp import EXAMPLES, FINANCE, request, running_stack, stub
from tests.integration.test_signed_bundles import read_tar
from tests.servers import wait_until

DENY = pdp_pb2.DECISION_DENY
FINANCE_POLICY = "finance-analyst-readonly"
POLICY = "finance-analyst-readonly.yaml"
INTRUDER = "spiffe://prod/agent/intruder"
_edits = count(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    policies = tmp_path_factory.mktemp("signing") / "policies"
    shutil.copytree(EXAMPLES, policies)
    with running_stack(policies, ledger_url="off") as s:  # decisions here need no ledger
        yield s


def opa_config(stack: Stack) -> dict:
    assert stack.opa is not None
    return json.loads((stack.opa.workdir / "opa-config.json").read_text())


def opa_log(stack: Stack) -> str:
    assert stack.opa is not None
    return (stack.opa.workdir / "opa.log").read_text(errors="replace")


def decision(stack: Stack, workload: str = FINANCE) -> pdp_pb2.AuthorizeResponse:
    channel, pdp = stub(stack)
    with channel:
        return pdp.Authorize(request(workload, tool="salesforce.accounts", action="read"), timeout=10)


def reload_new_revision(stack: Stack) -> str:
    """Edit a policy, hot-reload, and wait until OPA decides with the re-signed revision."""
    path = stack.policies / POLICY
    path.write_text(re.sub(r"daily_usd: \d+", f"daily_usd: {75 + next(_edits)}", path.read_text()))
    assert stack.reload()
    assert stack.store.current is not None
    revision = stack.store.current.revision
    wait_until(lambda: decision(stack).bundle_revision == revision, 20, "the reloaded revision")
    return revision


def test_managed_opa_verifies_and_activates_the_signed_bundle(stack: Stack) -> None:
    assert stack.signer is not None and stack.store.current is not None
    r = decision(stack)  # OPA's answer: the grant matched (the budget needs a ledger, off here)
    assert (r.policy, r.bundle_revision) == (FINANCE_POLICY, stack.store.current.revision)

    config = opa_config(stack)
    keyid = config["bundles"]["aam"]["signing"]["keyid"]
    key = config["keys"][keyid]
    assert key["algorithm"] == "ES256" and "PUBLIC KEY" in key["key"]
    assert stat.S_IMODE(os.stat(stack.opa.workdir / "opa-config.json").st_mode) == 0o600  # type: ignore[union-attr]
    assert stat.S_IMODE(os.stat(stack.opa.workdir).st_mode) == 0o700  # type: ignore[union-attr]

    served = read_tar(requests.get(stack.bundle_url, timeout=5).content)
    token = json.loads(served["/.signatures.json"])["signatures"][0]
    payload = jwt.decode(token, key["key"], algorithms=["ES256"])
    assert {f["name"] for f in payload["files"]} == {n.lstrip("/") for n in served} - {".signatures.json"}
    private = stack.signer.private
    for text in (json.dumps(config), opa_log(stack), repr(stack.signer)):
        assert private.decode() not in text and "PRIVATE KEY" not in text


def refused(stack: Stack, since: int, reason: str) -> bool:
    """OPA logged that it would not load a downloaded bundle, for ``reason``."""
    for line in opa_log(stack)[since:].splitlines():
        msg = json.loads(line).get("msg", "") if line.startswith("{") else ""
        if msg.startswith("Bundle load failed") and reason in msg:
            return True
    return False


def new_revision(stack: Stack, case: str) -> Bundle:
    """The served policies with a marker in the data: a revision OPA has not seen (no 304)."""
    compiled = stack.compile()
    data = json.loads(compiled.files[DATA_PATH])
    del data["revision"]
    return Bundle.build({**data, "test_case": case},
                        {n: b for n, b in compiled.files.items() if n.endswith(".rego")})


def _data_changed(signed: Bundle) -> Bundle:
    """The finance agent's grants copied to a workload that has none."""
    files = dict(signed.files)
    data = json.loads(files[DATA_PATH])
    data["policies"][INTRUDER] = data["policies"][FINANCE]
    files[DATA_PATH] = json.dumps(data).encode()
    return Bundle(signed.revision, files)


def _policy_changed(signed: Bundle) -> Bundle:
    files = dict(signed.files)
    name = sorted(n for n in files if n.endswith(".rego"))[0]
    files[name] += b"\n# changed after signing\n"
    return Bundle(signed.revision, files)


def _policy_added(signed: Bundle) -> Bundle:
    files = dict(signed.files)
    files["aam/intruder.rego"] = b"package aam.intruder\n\nallow := true\n"
    return Bundle(signed.revision, files)


class _Tampering:
    """Stands in for the PDP's signer: signs, then lets ``tamper`` change the result."""

    def __init__(self, sign: Callable[[Bundle], Bundle], tamper: Callable[[Bundle], Bundle]) -> None:
        self._sign, self._tamper = sign, tamper

    def sign(self, bundle: Bundle) -> Bundle:
        return self._tamper(self._sign(bundle))


CASES = {
    "data changed after signing": (_data_changed, "data.json: digest mismatch"),
    "policy changed after signing": (_policy_changed, ".rego: digest mismatch"),
    "policy added after signing": (_policy_added, "intruder.rego not included in bundle signature"),
    "signed with another key": (None, "failed to verify JWT signature"),
    "unsigned": (None, "bundle missing .signatures.json file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_opa_refuses_a_served_bundle_that_does_not_verify(stack: Stack, case: str) -> None:
    signer = stack.signer
    assert signer is not None
    before = decision(stack).bundle_revision
    tamper, reason = CASES[case]
    bad: Signer | None = (_Tampering(signer.sign, tamper) if tamper
                          else BundleSigner.ephemeral() if case == "signed with another key" else None)
    bundle = new_revision(stack, case)
    seen = len(opa_log(stack))
    stack.store.signer = bad
    try:
        stack.store.publish(bundle)
        wait_until(lambda: refused(stack, seen, reason), 20, f"OPA to refuse the bundle ({case})")
    finally:
        stack.store.signer = signer
    assert stack.store.current is not None and stack.store.current.revision == bundle.revision
    r = decision(stack)
    assert (r.policy, r.bundle_revision) == (FINANCE_POLICY, before)  # the last verified bundle
    intruder = decision(stack, INTRUDER)
    assert (intruder.decision, intruder.policy) == (DENY, "")
    assert signer.private.decode() not in opa_log(stack)
    # Signed again by the PDP's key, the next revision is accepted: OPA kept polling.
    assert reload_new_revision(stack) != before
