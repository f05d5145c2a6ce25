"""The end-to-end tests' SPIFFE PKI is the product's development PKI (pdp/devpki.py)."""

from pdp.devpki import Svid, TrustDomain

__all__ = ["Svid", "TrustDomain"]
