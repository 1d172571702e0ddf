"""mlpx is typed: ``mypy --strict`` passes on the package, and user code sees mlpx's types.

mypy reads the package as it is installed, with ``backends/`` as ``mlpx.backends``
(an editable install maps it with an import hook that mypy cannot follow), so the
check runs on a copy of that layout in a temporary folder. The configuration, with
its written allow-list of exceptions, is ``[tool.mypy]`` in pyproject.toml.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api", reason="the typing checks need mypy (in the test extra)")

ROOT = Path(__file__).resolve().parents[1]

USER_SCRIPT = '''
import numpy as np
import mlpx

X = np.zeros((12, 4))
y = np.arange(12) % 3
model = mlpx.MLP([4, 8, 3], seed=0)
reveal_type(model)
history = model.fit(X, y, epochs=1)
reveal_type(history)
reveal_type(model.predict(X))
clf = mlpx.MLPClassifier(hidden_layer_sizes=(8,), max_iter=1).fit(X, y)
reveal_type(clf)
reveal_type(clf.predict_proba(X))
reveal_type(mlpx.MLPRegressor().fit(X, y.astype(float)))
stack = mlpx.Stack(model, seeds=[0, 1])
reveal_type(stack)
reveal_type(stack.fit(X, y, epochs=1))
'''

#: What each reveal_type above must show, in order.
EXPECTED = [
    "mlpx.model.Sequential",
    "mlpx.training.History",
    "numpy.ndarray",
    "mlpx.estimators._classifier.MLPClassifier",
    "numpy.ndarray",
    "mlpx.estimators._regressor.MLPRegressor",
    "mlpx.stacked.Stack",
    "mlpx.training.History",
]


@pytest.fixture(scope="module")
def mypy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    tree = tmp_path_factory.mktemp("typecheck")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "mlpx", tree / "mlpx", ignore=ignore)
    shutil.copytree(ROOT / "backends", tree / "mlpx" / "backends", ignore=ignore)
    (tree / "user_script.py").write_text(USER_SCRIPT, encoding="utf-8")
    stdout, stderr, status = api.run([
        "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tree / ".mypy_cache"),
        "--no-error-summary", str(tree / "mlpx"), str(tree / "user_script.py"),
    ])
    return stdout + stderr, status


def test_package_ships_py_typed() -> None:
    assert (ROOT / "mlpx" / "py.typed").is_file()
    assert '"py.typed"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_mypy_strict_passes_on_the_package(mypy_run: tuple[str, int]) -> None:
    output, _ = mypy_run
    errors = [line for line in output.splitlines() if ": error:" in line]
    assert not errors, "\n".join(errors)


def test_user_script_sees_mlpx_types_not_any(mypy_run: tuple[str, int]) -> None:
    output, _ = mypy_run
    revealed = re.findall(r'user_script\.py:\d+: note: Revealed type is "(.*)"', output)
    assert len(revealed) == len(EXPECTED), output
    for got, want in zip(revealed, EXPECTED):
        assert got.startswith(want), f"revealed {got!r}, expected {want}"
        # An ndarray's own parameters (shape, dtype) are generic; the type itself is not Any.
        assert "Any" not in re.sub(r"^numpy\.ndarray\[.*\]$", "numpy.ndarray", got), got
