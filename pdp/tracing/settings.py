"""Settings of the OpenTelemetry traces of decisions: where they are exported, how many."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from pdp.settingbase import ConfigError, SettingsPart, setting_error, split_addr


@dataclass(frozen=True)
class TracingSettings(SettingsPart):
    """Where traces of decisions are exported, and how many."""

    # OTLP/gRPC endpoint traces are exported to, e.g. "http://127.0.0.1:4317" (plaintext)
    # or "https://collector:4317" (TLS, system CAs or otlp_ca_file); "" turns tracing off
    # (the default).
    otlp_endpoint: str = ""
    # CA bundle for an https otlp_endpoint; "" uses the system's.
    otlp_ca_file: str = ""
    # Fraction of decisions traced when no parent says otherwise (a sampled parent
    # traceparent is always followed: ParentBased(TraceIdRatioBased)).
    trace_sample_ratio: float = 1.0
    # The service.name resource attribute.
    trace_service_name: str = "aam-pdp"

    def validate(self) -> None:
        if self.otlp_endpoint:
            self._validate_endpoint()
        if self.otlp_ca_file and not self.otlp_endpoint.startswith("https://"):
            raise setting_error("otlp_ca_file", "needs an https:// otlp_endpoint, got "
                                                f"{self.otlp_endpoint!r}")
        if not 0.0 <= self.trace_sample_ratio <= 1.0:  # NaN too
            raise setting_error("trace_sample_ratio", "must be between 0 and 1, got "
                                                      f"{self.trace_sample_ratio!r}")
        if not self.trace_service_name or self.trace_service_name != self.trace_service_name.strip():
            raise setting_error("trace_service_name", "must be non-empty without surrounding "
                                                      f"whitespace, got {self.trace_service_name!r}")

    def _validate_endpoint(self) -> None:
        value = self.otlp_endpoint
        shape = f"must be http://host:port or https://host:port, got {value!r}"
        try:
            url = urlsplit(value)
        except ValueError:
            raise setting_error("otlp_endpoint", shape) from None
        if url.scheme not in ("http", "https") or "@" in url.netloc or url.path not in ("", "/") \
                or url.query or url.fragment or value != value.strip():
            raise setting_error("otlp_endpoint", shape)
        try:
            split_addr(url.netloc, "otlp_endpoint")
        except ConfigError:
            raise setting_error("otlp_endpoint", shape) from None
