"""The deploy modules (mlpx.onnx, mlpx.torch, mlpx.estimators._convert) stay optional:
``import mlpx`` works with NumPy alone, a missing package gives an ImportError that
says what to install, and the modules import nothing above them (no cycles)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mlpx

ROOT = Path(mlpx.__file__).resolve().parent
BLOCK = "import sys\nfor _m in {mods!r}:\n    sys.modules[_m] = None  # import raises ImportError\n"


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_mlpx_needs_only_numpy() -> None:
    mods = ["onnx", "onnxruntime", "skl2onnx", "torch", "sklearn", "scipy"]
    code = BLOCK.format(mods=mods) + (
        "import mlpx\n"
        "model = mlpx.MLP([3, 4, 2], seed=0)\n"
        "print(model.predict([[0.0, 1.0, 2.0]]).shape)\n"
        "print(sorted(m for m in ('mlpx.onnx', 'mlpx.torch', 'mlpx.estimators') if m in sys.modules))\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["(1,)", "[]"]


@pytest.mark.parametrize("blocked,call,message", [
    ("onnx", "mlpx.MLP([3, 2]).to_onnx()", "pip install 'mlpx[onnx]'"),
    ("torch", "mlpx.MLP([3, 2]).to_torch()", "pip install torch"),
])
def test_missing_package_says_what_to_install(blocked: str, call: str, message: str) -> None:
    proc = run_python(BLOCK.format(mods=[blocked]) + f"import mlpx\n{call}\n")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and message in proc.stderr


@pytest.mark.parametrize("path", ["onnx.py", "torch.py", "estimators/_convert.py"])
def test_deploy_modules_import_nothing_above_them(path: str) -> None:
    """They read the object they are given; importing the model or the estimators
    (even inside a function) would close an import cycle through the thin methods.
    Below those they may use the array layer (mlpx.backends) and the file writer
    (mlpx.atomic_write), which import nothing of mlpx."""
    tree = ast.parse((ROOT / path).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    mlpx_modules = {m for m in imported if m == "mlpx" or m.startswith("mlpx.")}
    assert mlpx_modules <= {"mlpx.activations", "mlpx.layers", "mlpx.backends", "mlpx.atomic_write"}, mlpx_modules
