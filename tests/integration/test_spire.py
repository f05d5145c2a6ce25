"""The real SPIRE the identity tests stand on: entries registered as an operator does, SVIDs
fetched over the Workload API by the workloads they name, and none for anyone else."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from tests.spire import Spire, wait_for_svid

FINANCE = "spiffe://prod/agent/finance-analyst"


def uri_sans(pem: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    return cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)


def test_a_registered_workload_gets_its_svid_and_an_unregistered_one_none(
        spire: Spire, tmp_path: Path) -> None:
    spire.register(FINANCE, ["unix:gid:52001"])
    svid = wait_for_svid(spire, tmp_path / "finance", gid=52001)
    assert uri_sans(svid / "svid.0.pem") == [FINANCE]
    assert (svid / "bundle.0.pem").read_text().strip() == spire.bundle.read_text().strip()
    nobody = spire.fetch_x509(tmp_path / "nobody", gid=52002, timeout_s=5)
    assert nobody.returncode != 0 and "no identity issued" in nobody.stderr
    assert not (tmp_path / "nobody" / "svid.0.pem").exists()
    listed = {f"spiffe://{e['spiffe_id']['trust_domain']}{e['spiffe_id']['path']}"
              for e in spire.entries()}
    assert FINANCE in listed
