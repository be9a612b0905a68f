"""The type checker (mypy --strict, configured in mypy.ini) is clean on the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict_is_clean():
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "mypy.ini")], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-20000:] + out.stderr[-2000:]
    assert "Success: no issues found" in out.stdout


def test_type_stubs_only_beside_modules_of_component_classes():
    """Gradio writes a stub (.pyi) beside a module that defines a component, copying the module once; the type
    checker then reads the stub instead of the module. So a stub may only sit beside a module whose top level is
    its imports and component classes (which gradio keeps in step), or new functions would be invisible to it."""
    import ast

    stubs = sorted((ROOT / "finetune").rglob("*.pyi"))
    for stub in stubs:
        module = ast.parse(stub.with_suffix(".py").read_text(encoding="utf-8"))
        other = [type(n).__name__ + (f" {n.name}" if hasattr(n, "name") else "") for n in module.body
                 if not isinstance(n, (ast.Import, ast.ImportFrom, ast.ClassDef))
                 and not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]  # the docstring
        assert not other, f"{stub.name}: its module also holds {other}; move them to another module"
        assert {n.name for n in module.body if isinstance(n, ast.ClassDef)} <= {
            n.name for n in ast.parse(stub.read_text(encoding="utf-8")).body if isinstance(n, ast.ClassDef)}
