"""Running a test file of the installed scikit-learn against mlpx (shared by the suite tests)."""

from __future__ import annotations

import importlib.util
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
