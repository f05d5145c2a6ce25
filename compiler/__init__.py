"""AgentPolicy YAML -> OPA bundle compiler."""

from compiler.bundle import Bundle
from compiler.errors import CompileError, Diagnostic
from compiler.pipeline import compile_paths, load

__all__ = ["Bundle", "CompileError", "Diagnostic", "compile_paths", "load"]
