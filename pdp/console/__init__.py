"""The read-only web console: what security engineers look at instead of `aam audit query`.

Its own listener (``console_addr``, off unless asked for; ``aam up`` puts it on
loopback), GET only, server-rendered HTML (Jinja2, autoescaped) and SVG charts (pygal):
no JavaScript at all, so its CSP forbids scripts. :mod:`pdp.console.server` is the
transport (listener, TLS, auth, headers), :mod:`pdp.console.views` reads the ledger
and the compiled policies into what each page shows.
"""

from pdp.console.build import console_server
from pdp.console.history import RevisionLog
from pdp.console.server import ConsoleServer

__all__ = ["ConsoleServer", "RevisionLog", "console_server"]
