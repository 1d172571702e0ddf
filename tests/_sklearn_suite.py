"""Running a test file of the installed scikit-learn against mlpx (shared by the suite tests)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest


def installed_suite(module: str) -> Path:
    """The path of the installed scikit-learn's test module ``module`` (skips without one)."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None or spec.origin is None:
        pytest.skip("the installed scikit-learn ships without its tests")
    return Path(spec.origin)


def outcomes(junit: Path) -> dict[str, str]:
    """Test name -> "passed" / "failed" / "skipped" from pytest's JUnit XML."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kids = {child.tag for child in case}
        state = "failed" if kids & {"failure", "error"} else "skipped" if "skipped" in kids else "passed"
        out[str(case.get("name"))] = state
    return out


def run_side_by_side(tmp_path: Path, filename: str, texts: dict[str, str],
                     extra: dict[str, str] | None = None) -> dict[str, str]:
    """Run each text as ``tmp_path/<name>/<filename>`` in its own pytest process, at once.

    Each run has scikit-learn's ``sklearn/conftest.py`` as a plugin (its markers,
    thread limits and seed fixtures), no ini file of an enclosing folder, the files
    ``extra`` (name -> text) beside it, and writes ``junit.xml`` there.

    Returns
    -------
    dict
        Run name -> its output; a run that did not complete (exit status other
        than 0 or 1) fails the calling test.
    """
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "SKLEARN_"))}
    procs = {}
    for name, text in texts.items():
        d = tmp_path / name
        d.mkdir()
        (d / filename).write_text(text)
        for other, content in (extra or {}).items():
            (d / other).write_text(content)
        cmd = [sys.executable, "-m", "pytest", filename, "-q", "-p", "no:cacheprovider", "-p", "sklearn.conftest",
               "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(d), "--junitxml", str(d / "junit.xml")]
        procs[name] = subprocess.Popen(cmd, cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
    logs = {name: p.communicate(timeout=900)[0] for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode in (0, 1), f"{name} run did not complete (exit {p.returncode}):\n{logs[name][-3000:]}"
    return logs
