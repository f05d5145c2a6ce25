"""OPA's compiled Wasm, evaluated in this process (wasmtime), for bench/wasm.py.

The Wasm ABI (OPA's docs, "WebAssembly"): the module imports its memory and
``opa_builtin0..4``/``opa_abort``; data is parsed once into the module's heap
(``opa_json_parse``), and each decision is one ``opa_eval`` call (ABI 1.2+):
the input is written at the heap pointer left after the data, and the call
resets the heap there, so nothing leaks from one decision to the next.

Builtins that OPA does not compile into the module are the host's. The AAM
policies need six (``sprintf``, ``time.now_ns``, ``time.clock``,
``time.weekday``, ``time.parse_rfc3339_ns``, and explain.rego's ``regex.find_n``,
which the module declares although decisions never call it); they are written here to give
what OPA's Go builtins give, byte for byte, because the decision carries the
messages ``sprintf`` makes (``%v`` is Go's ``%g`` with shortest digits, and
composite values print as OPA's ``Term.String()``, sorted). Anything else the
module asks for is refused when it loads.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import re
import tarfile
import time
import zoneinfo
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
PAGE = 65536
MIN_PAGES = 5


class WasmError(RuntimeError):
    """The module aborted, a builtin failed, or the module needs what this host lacks."""


def read_wasm_bundle(path: Path) -> tuple[bytes, bytes]:
    """(policy.wasm, data.json) from ``opa build -t wasm`` output."""
    with tarfile.open(path) as tar:
        files = {m.name.lstrip("/"): tar.extractfile(m) for m in tar.getmembers() if m.isfile()}
        return files["policy.wasm"].read(), files["data.json"].read()  # type: ignore[union-attr]


class OpaWasm:
    """One module instance: not thread-safe (a PDP would keep one per worker thread).

    ``raw``: call across the Wasm boundary with wasmtime's unchecked C calls (preallocated
    ctypes buffers, both ways) instead of wasmtime-py's ``Func`` objects, whose type checks
    and conversions cost tens of µs per crossing, ten or more crossings per decision. The
    module, data and host builtins are the same either way.
    """

    def __init__(self, wasm: bytes, data: bytes, entrypoint: str = "aam/authz/decision",
                 raw: bool = False) -> None:
        self.raw = raw
        self.engine = wasmtime.Engine()
        self.store = wasmtime.Store(self.engine)
        self._ctx = self.store._context()  # the raw calls' context; a host call's own inside one
        self._error: BaseException | None = None  # what a raw host call raised, for its trap
        self._keep: list[Any] = []  # the raw callbacks' ctypes thunks, alive as long as the module
        module = wasmtime.Module(self.engine, wasm)
        limits = next(i.type.limits for i in module.imports if i.name == "memory")  # type: ignore[union-attr]
        # At the declared minimum (2 pages) a build with more static data trapped (out of
        # bounds) while instantiating; OPA's npm SDK starts at 5 pages, and so does this host.
        pages = max(limits.min, MIN_PAGES)
        self.memory = wasmtime.Memory(self.store, wasmtime.MemoryType(wasmtime.Limits(pages, None)))
        self._now_ns: int | None = None
        self.builtin_errors = 0  # host builtin calls that failed (undefined, as in OPA)
        imports: list[Any] = []
        i32 = wasmtime.ValType.i32()
        for imp in module.imports:
            if imp.name == "memory":
                imports.append(self.memory)
            elif imp.name == "opa_abort":
                imports.append(self._host(wasmtime.FuncType([i32], []), self._abort, 1, False))
            elif imp.name.startswith("opa_builtin"):
                n = int(imp.name.removeprefix("opa_builtin")) + 2
                imports.append(self._host(wasmtime.FuncType([i32] * n, [i32]), self._builtin, n, True))
            else:
                raise WasmError(f"module imports {imp.module}.{imp.name}, which this host does not provide")
        self.instance = wasmtime.Instance(self.store, module, imports)
        ex = self.instance.exports(self.store)
        self._fn: dict[str, Callable[..., int]] = {
            name: self._export(ex[name], nargs) for name, nargs in (
                ("opa_malloc", 1), ("opa_json_parse", 2), ("opa_json_dump", 1), ("opa_value_dump", 1),
                ("opa_heap_ptr_get", 0), ("opa_eval", 7), ("builtins", 0), ("entrypoints", 0))}
        abi = tuple(ex[f"opa_wasm_abi_{v}"].value(self.store) for v in ("version", "minor_version"))
        if abi < (1, 2):
            raise WasmError(f"Wasm ABI {abi}: opa_eval needs 1.2 or later")
        host = {"sprintf": self._sprintf, "time.now_ns": self._time_now_ns, "time.clock": _time_clock,
                "time.weekday": _time_weekday, "time.parse_rfc3339_ns": _parse_rfc3339_ns,
                "regex.find_n": _regex_find_n}
        wanted = self._dump(self._fn["builtins"]())
        missing = sorted(set(wanted) - set(host))
        if missing:
            raise WasmError(f"the policy needs builtins this host lacks: {', '.join(missing)}")
        self._ids = {i: host[name] for name, i in wanted.items()}
        self._sprintf_id = wanted.get("sprintf", -1)
        self.entrypoint = self._dump(self._fn["entrypoints"]())[entrypoint]
        self.builtins = sorted(wanted)
        self.data_addr = self._parse(data)
        self.heap = self._fn["opa_heap_ptr_get"]()

    # --- crossing the boundary -------------------------------------------------------------

    def _export(self, func: Any, nargs: int) -> Callable[..., int]:
        if not self.raw:
            return lambda *args: func(self.store, *args)
        buf = (ffi.wasmtime_val_raw_t * max(nargs, 1))()
        ref = ctypes.byref(func._func)
        call = ffi.wasmtime_func_call_unchecked

        def raw_call(*args: int) -> int:
            for i, a in enumerate(args):
                buf[i].i32 = a
            trap = ctypes.POINTER(ffi.wasm_trap_t)()
            err = call(self._ctx, ref, buf, len(buf), ctypes.byref(trap))
            if err or trap:
                self._raise(err, trap)
            return buf[0].i32
        return raw_call

    def _raise(self, err: Any, trap: Any) -> None:
        cause, self._error = self._error, None
        what = wasmtime.WasmtimeError._from_ptr(err) if err else wasmtime.Trap._from_ptr(trap)
        raise WasmError(str(cause or what)) from cause

    def _host(self, ty: wasmtime.FuncType, fn: Callable[..., Any], nargs: int, result: bool) -> wasmtime.Func:
        if not self.raw:
            return wasmtime.Func(self.store, ty, fn)

        def thunk(_env: Any, caller: Any, vals: Any, _n: int) -> int:
            outer, self._ctx = self._ctx, ffi.wasmtime_caller_context(caller)
            try:
                out = fn(*(vals[i].i32 for i in range(nargs)))
                if result:
                    vals[0].i32 = out
                return 0
            except BaseException as exc:
                self._error = exc
                return ctypes.cast(wasmtime.Trap(str(exc))._consume(), ctypes.c_void_p).value or 0
            finally:
                self._ctx = outer
        cb = ffi.wasmtime_func_unchecked_callback_t(thunk)
        self._keep.append(cb)
        func = wasmtime.Func.__new__(wasmtime.Func)
        func._func = ffi.wasmtime_func_t()
        no_finalizer = ctypes.cast(None, ctypes.CFUNCTYPE(None, ctypes.c_void_p))
        ffi.wasmtime_func_new_unchecked(self.store._context(), ty.ptr(), cb, None, no_finalizer,
                                        ctypes.byref(func._func))
        return func

    # --- memory ---------------------------------------------------------------------------

    def _base(self) -> int:
        data = ffi.wasmtime_memory_data(self._ctx, ctypes.byref(self.memory._memory))
        return ctypes.addressof(data.contents)

    def _cstr(self, addr: int) -> bytes:
        return ctypes.string_at(self._base() + addr)

    def _dump(self, value: int) -> Any:
        return json.loads(self._cstr(self._fn["opa_json_dump"](value)))

    def _ensure(self, end: int) -> None:
        size = ffi.wasmtime_memory_data_size(self._ctx, ctypes.byref(self.memory._memory))
        if end > size:
            self.memory.grow(self.store, (end - size + PAGE - 1) // PAGE)

    def _parse(self, raw: bytes) -> int:
        addr = self._fn["opa_malloc"](len(raw))
        self._ensure(addr + len(raw))
        ctypes.memmove(self._base() + addr, raw, len(raw))
        value = self._fn["opa_json_parse"](addr, len(raw))
        if not value:
            raise WasmError("opa_json_parse failed")
        return value

    # --- evaluation -----------------------------------------------------------------------

    def evaluate_raw(self, input_json: bytes) -> bytes:
        """``[{"result": ...}]`` (or ``[]``: undefined) for one input, as OPA's JSON."""
        self._now_ns = None  # time.now_ns is fixed per evaluation, as in OPA
        n = len(input_json)
        self._ensure(self.heap + n + PAGE)
        ctypes.memmove(self._base() + self.heap, input_json, n)
        addr = self._fn["opa_eval"](0, self.entrypoint, self.data_addr, self.heap, n, self.heap + n, 0)
        return self._cstr(addr)

    def evaluate(self, input_doc: dict[str, Any]) -> Any:
        """The decision for ``input_doc``, as OpaClient.query gives it (raises if undefined)."""
        out = json.loads(self.evaluate_raw(json.dumps(input_doc, separators=(",", ":")).encode()))
        if not out:
            raise WasmError("decision undefined")
        return out[0]["result"]

    # --- host functions -------------------------------------------------------------------

    def _abort(self, addr: int) -> None:
        raise WasmError(f"opa_abort: {self._cstr(addr).decode(errors='replace')}")

    def _builtin(self, builtin_id: int, _ctx: int, *args: int) -> int:
        fn = self._ids[builtin_id]
        try:
            # sprintf needs the values' Rego types (sets, number text): it reads them itself.
            result = fn(*args) if builtin_id == self._sprintf_id else fn(*map(self._dump, args))
        except (WasmError, ValueError, TypeError, KeyError, IndexError, OverflowError,
                zoneinfo.ZoneInfoNotFoundError):
            # A builtin's error leaves its expression undefined, as OPA does unless
            # strict-builtin-errors is on: the module reads a null value as undefined.
            self.builtin_errors += 1
            return 0
        return self._parse(json.dumps(result, ensure_ascii=False).encode())

    def _time_now_ns(self) -> int:
        if self._now_ns is None:
            self._now_ns = time.time_ns()
        return self._now_ns

    def _sprintf(self, fmt_addr: int, args_addr: int) -> str:
        fmt = self._dump(fmt_addr)
        args = RegoText(self._cstr(self._fn["opa_value_dump"](args_addr)).decode()).value()
        if not isinstance(args, list):
            raise WasmError("sprintf: operand 2 must be an array")
        return go_sprintf(fmt, [_go_arg(a) for a in args])


# --- time builtins (Go's time package) ------------------------------------------------------

def _zone(tz: str) -> dt.tzinfo:
    if tz in ("", "UTC"):
        return dt.UTC
    if tz == "Local":
        return dt.datetime.now().astimezone().tzinfo or dt.UTC
    return zoneinfo.ZoneInfo(tz)


def _moment(arg: Any) -> dt.datetime:
    ns, tz = (arg[0], arg[1]) if isinstance(arg, list) else (arg, "")
    return dt.datetime.fromtimestamp(int(ns) // 1_000_000_000, _zone(tz))


def _time_clock(arg: Any) -> list[int]:
    t = _moment(arg)
    return [t.hour, t.minute, t.second]


def _time_weekday(arg: Any) -> str:
    return WEEKDAYS[_moment(arg).weekday()]


def _regex_find_n(pattern: str, value: str, n: int) -> list[str]:
    """Go's RE2 and Python's re agree on the patterns the library uses (explain.rego's
    rule paths: classes, repeats, escapes); ``n`` < 0 means every match, as in Go."""
    found = [m.group(0) for m in re.finditer(pattern, value)]
    return found if int(n) < 0 else found[:int(n)]


_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?"
                      r"(?:([Zz])|([+-])(\d\d):(\d\d))$")


def _parse_rfc3339_ns(s: str) -> int:
    m = _RFC3339.match(s)
    if not m:
        raise WasmError(f"time.parse_rfc3339_ns: cannot parse {s!r}")
    y, mo, d, h, mi, sec = (int(g) for g in m.groups()[:6])
    frac, z, sign, oh, om = m.groups()[6:]
    offset = dt.timedelta(0) if z else (-1 if sign == "-" else 1) * dt.timedelta(hours=int(oh),
                                                                                   minutes=int(om))
    t = dt.datetime(y, mo, d, h, mi, sec, tzinfo=dt.timezone(offset))
    return int(t.timestamp()) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


# --- Rego values as OPA prints them (opa_value_dump in, Term.String() out) --------------------

class Num(str):
    """A Rego number, kept as its text (OPA's sprintf decides int or float on the text)."""


class RegoSet(list):  # type: ignore[type-arg]
    """A Rego set (opa_value_dump prints ``{a, b}`` or ``set()``)."""


class RegoText:
    """A parser for opa_value_dump's output: JSON plus set literals."""

    _SCALAR = json.JSONDecoder()

    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def value(self) -> Any:
        s = self.s
        while s[self.i] == " ":
            self.i += 1
        c = s[self.i]
        if c == "[":
            return self._seq("]", list())
        if c == "{":
            return self._brace()
        if s.startswith("set()", self.i):
            self.i += 5
            return RegoSet()
        if c in "-0123456789":
            m = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?").match(s, self.i)
            assert m
            self.i = m.end()
            return Num(m.group())
        v, self.i = self._SCALAR.raw_decode(s, self.i)
        return v

    def _skip(self, ch: str) -> bool:
        while self.s[self.i] == " ":
            self.i += 1
        if self.s[self.i] == ch:
            self.i += 1
            return True
        return False

    def _seq(self, close: str, out: list[Any]) -> list[Any]:
        self.i += 1
        if self._skip(close):
            return out
        while True:
            out.append(self.value())
            if self._skip(close):
                return out
            self._skip(",")

    def _brace(self) -> Any:
        self.i += 1
        if self._skip("}"):
            return {}
        first = self.value()
        if not self._skip(":"):
            rest = [first]
            while not self._skip("}"):
                self._skip(",")
                rest.append(self.value())
            return RegoSet(rest)
        pairs = [(first, self.value())]
        while not self._skip("}"):
            self._skip(",")
            k = self.value()
            self._skip(":")
            pairs.append((k, self.value()))
        return _Obj(pairs)


class _Obj(list):  # type: ignore[type-arg]
    """A Rego object as its (key, value) pairs (keys may be any value)."""


def _order(v: Any) -> tuple[Any, ...]:
    """OPA's ast.Compare order: null < boolean < number < string < array < object < set."""
    if v is None:
        return (0,)
    if isinstance(v, bool):
        return (1, v)
    if isinstance(v, Num):
        return (2, Decimal(v))
    if isinstance(v, str):
        return (3, v.encode())
    if isinstance(v, RegoSet):
        return (6, tuple(sorted(map(_order, v))))
    if isinstance(v, _Obj):
        return (5, tuple(sorted((_order(k), _order(x)) for k, x in v)))
    return (4, tuple(map(_order, v)))


def rego_string(v: Any) -> str:
    """OPA's ``Term.String()``: strings quoted as Go's strconv.Quote, sets and objects sorted."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Num):
        return str.__str__(v)
    if isinstance(v, str):
        return go_quote(v)
    if isinstance(v, RegoSet):
        return "{" + ", ".join(rego_string(x) for x in sorted(v, key=_order)) + "}" if v else "set()"
    if isinstance(v, _Obj):
        items = sorted(v, key=lambda kv: _order(kv[0]))
        return "{" + ", ".join(f"{rego_string(k)}: {rego_string(x)}" for k, x in items) + "}"
    return "[" + ", ".join(rego_string(x) for x in v) + "]"


def _go_arg(v: Any) -> Any:
    """What OPA's sprintf hands Go's fmt for one Rego value (topdown/strings.go)."""
    if isinstance(v, Num):
        text = str.__str__(v)
        if any(c in text for c in ".eE"):
            return float(text)
        return int(text)
    if isinstance(v, str) and not isinstance(v, Num):
        return v
    return rego_string(v)


# --- Go's fmt, for the verbs the policies use -------------------------------------------------

_VERB = re.compile(r"%([-+# 0]*)(\d*)(?:\.(\d*))?([a-zA-Z%])")


def go_quote(s: str) -> str:
    out = ['"']
    for c in s:
        o = ord(c)
        if c in '"\\':
            out.append("\\" + c)
        elif c in "\a\b\f\n\r\t\v":
            out.append({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                        "\v": "\\v"}[c])
        elif c.isprintable():
            out.append(c)
        elif o < 0x80:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "".join(out) + '"'


def go_g(f: float) -> str:
    """Go's ``%v`` for a float64: shortest digits, exponent form below 1e-4 or from 1e6 (``%g``)."""
    if f != f:
        return "NaN"
    if f in (float("inf"), float("-inf")):
        return "+Inf" if f > 0 else "-Inf"
    sign = "-" if str(f).startswith("-") else ""
    if f == 0:
        return sign + "0"
    t = Decimal(repr(abs(f))).normalize().as_tuple()
    digits = "".join(map(str, t.digits))
    dp = len(digits) + int(t.exponent)  # the decimal point sits after this many digits
    exp = dp - 1
    if exp < -4 or exp >= 6:
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return sign + digits + "0" * (dp - len(digits))
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


def _go_type(a: Any) -> str:
    return "int64" if isinstance(a, int) else "float64" if isinstance(a, float) else "string"


def _go_v(a: Any) -> str:
    return go_g(a) if isinstance(a, float) else str(a)


def _pad(s: str, flags: str, width: str, numeric: bool) -> str:
    w = int(width or 0)
    if len(s) >= w:
        return s
    if "-" in flags:
        return s.ljust(w)
    if "0" in flags and numeric:
        neg = s.startswith("-")
        return ("-" if neg else "") + s[neg:].rjust(w - neg, "0")
    return s.rjust(w)


def go_sprintf(fmt: str, args: list[Any]) -> str:
    """Go's fmt.Sprintf for %v %s %q %d %f (and %%), with Go's %!verb(type=value) for misuse."""
    out, pos, k = [], 0, 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos:m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        if k >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        a = args[k]
        k += 1
        if verb == "v":
            s, numeric = _go_v(a), not isinstance(a, str)
        elif verb == "s" and isinstance(a, str):
            s, numeric = a, False
        elif verb == "q" and isinstance(a, str):
            s, numeric = go_quote(a), False
        elif verb == "d" and isinstance(a, int):
            s, numeric = (f"+{a}" if "+" in flags and a >= 0 else str(a)), True
        elif verb == "f" and isinstance(a, float | int) and not isinstance(a, bool):
            s, numeric = f"{float(a):.{int(prec) if prec else 6}f}", True
        else:
            out.append(f"%!{verb}({_go_type(a)}={_go_v(a)})")
            continue
        out.append(_pad(s, flags, width, numeric))
    out.append(fmt[pos:])
    if k < len(args):
        out.append("%!(EXTRA " + ", ".join(f"{_go_type(a)}={_go_v(a)}" for a in args[k:]) + ")")
    return "".join(out)
