"""``aam up --envoy`` driven as the README recipe says: the official openai and mcp SDKs,
with the sample agent's SVID, against the Envoy that one command started."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import openai
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from pdp.opa import free_port
from tests.servers import VENV_BIN

AAM = str(VENV_BIN / "aam")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Up:
    proc: subprocess.Popen[str]
    banner: str
    lines: list[str] = field(default_factory=list)  # everything aam up printed since

    def field(self, pattern: str) -> str:
        m = re.search(pattern, self.banner, re.M)
        assert m, f"{pattern!r} not in the banner:\n{self.banner}"
        return m.group(1)

    def tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.field(r"CA (\S+)\)"))
        ctx.load_cert_chain(self.field(r"cert (\S+),"), self.field(r"key (\S+)$"))
        return ctx


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    state = tmp_path_factory.mktemp("state")
    env = {**os.environ, "XDG_STATE_HOME": str(state)}
    proc = subprocess.Popen([AAM, "up", "--envoy", "--grpc-addr", f"127.0.0.1:{free_port()}"],
                            cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    banner: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, "aam up --envoy exited:\n" + "".join(banner)
        banner.append(line)
        if "Ctrl-C" in line:
            break
    u = Up(proc, "".join(banner))

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            u.lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        yield u
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_the_banner_names_the_urls_and_the_agent_svid(up: Up) -> None:
    assert up.field(r"openai   base_url=(\S+)").startswith("https://127.0.0.1:")
    assert up.field(r"mcp      (\S+/mcp/salesforce\.accounts)")
    assert "spiffe://prod/agent/finance-analyst" in up.banner
    assert Path(up.field(r"key (\S+)$")).stat().st_mode & 0o777 == 0o600


def test_openai_sdk_allow_stream_and_a_readable_deny(up: Up) -> None:
    base = up.field(r"openai   base_url=(\S+)")
    client = openai.OpenAI(base_url=base, api_key="the-agents-own-key",
                           http_client=httpx2.Client(verify=up.tls()), max_retries=0)
    ok = client.chat.completions.create(model="reasoning-high", max_tokens=50,
                                        messages=[{"role": "user", "content": "hi"}])
    assert "routed alias 'reasoning-high'" in (ok.choices[0].message.content or "")
    assert "agent authorization stripped: True" in (ok.choices[0].message.content or "")
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="summarization", max_tokens=50, stream=True,
        messages=[{"role": "user", "content": "hi"}]))
    assert "routed alias 'summarization'" in streamed
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(model="gpt-4o", max_tokens=5,
                                       messages=[{"role": "user", "content": "hi"}])
    assert "model_not_allowed" in denied.value.message


def test_mcp_sdk_session_allow_deny_and_injected_credential(up: Up) -> None:
    url = up.field(r"mcp      (\S+/mcp/salesforce\.accounts)")

    async def session() -> tuple[list[str], str, MCPError]:
        async with httpx2.AsyncClient(verify=up.tls()) as http, \
                streamable_http_client(url, http_client=http) as (r, w), \
                ClientSession(r, w) as s:
            await s.initialize()
            tools = [t.name for t in (await s.list_tools()).tools]
            read = await s.call_tool("read", {"account_id": "001"})
            with pytest.raises(MCPError) as err:
                await s.call_tool("export", {})
            return tools, str(read.content[0].text), err.value  # type: ignore[union-attr]

    tools, read, denied = asyncio.run(session())
    assert "read" in tools and "export" not in tools  # finance-analyst may not export
    assert "demo salesforce.accounts read ran" in read
    assert "action_denied" in str(denied)
    time.sleep(0.3)  # the upstream's console line
    calls = [line for line in up.lines if "POST /mcp/salesforce.accounts" in line]
    assert any("credential injected (authorization: sha256:" in line for line in calls), calls
    assert not any("demo-" in line for line in up.lines)  # a fingerprint, never the value
