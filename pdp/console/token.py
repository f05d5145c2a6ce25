"""The operator token file's checks, at start: a 0600 file of at least 32 characters."""

from __future__ import annotations

from pdp.config import ConfigError
from pdp.secretfile import read_secret

MIN_TOKEN = 32


def check_token(path: str) -> bytes:
    token = read_secret(path, "console_token_file").strip()
    if len(token) < MIN_TOKEN:
        raise ConfigError(f"setting console_token_file: {path} holds {len(token)} characters; "
                          f"an operator token needs at least {MIN_TOKEN}",
                          setting="console_token_file", reason=f"needs at least {MIN_TOKEN} characters")
    return token
