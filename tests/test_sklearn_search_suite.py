"""scikit-learn's own search tests, run against mlpx's searches.

The installed scikit-learn's ``sklearn/model_selection/tests/test_search.py`` (read
from the installed package, never vendored) is copied twice into a temporary
folder: once as it is (the control) and once with only its imports of
``GridSearchCV`` and ``RandomizedSearchCV`` swapped to :mod:`mlpx.model_selection`.
Both run in pytest subprocesses, side by side, with scikit-learn's own
``sklearn/conftest.py`` as a plugin (its markers, thread limits and seed fixtures);
the swapped file must fail exactly where the control fails (nowhere, on a healthy
install). A ``conftest.py`` beside each copy records which classes the module
really imported, so a swap that did not take cannot pass.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import pytest
from _sklearn_suite import installed_suite, outcomes, run_side_by_side

SUITE = "sklearn.model_selection.tests.test_search"
SWAPPED = ("GridSearchCV", "RandomizedSearchCV")
MLPX_IMPORT = "from mlpx.model_selection import GridSearchCV, RandomizedSearchCV\n"
_BLOCK = re.compile(r"^from sklearn\.model_selection import \((?P<names>[^)]*)\)\n", re.MULTILINE)

# Beside each copy: which GridSearchCV / RandomizedSearchCV the collected module holds.
_RECORDER = '''
import json
from pathlib import Path


def pytest_collection_finish(session):
    mods = {item.module.__name__: [getattr(item.module, n).__module__ for n in ("GridSearchCV", "RandomizedSearchCV")]
            for item in session.items if getattr(item, "module", None) is not None}
    Path(__file__).with_name("imported.json").write_text(json.dumps(mods))
'''


def swap_imports(source: str) -> str:
    """``source`` with ``GridSearchCV`` and ``RandomizedSearchCV`` imported from mlpx instead.

    Parameters
    ----------
    source : str
        The text of scikit-learn's ``test_search.py``.

    Returns
    -------
    str
        The same text, the two names taken out of its parenthesised
        ``from sklearn.model_selection import (...)`` and imported from
        :mod:`mlpx.model_selection` on the line after it.

    Raises
    ------
    ValueError
        When the file does not import both names in one such block (its layout
        changed: the swap must be looked at again, not silently skipped).
    """
    m = _BLOCK.search(source)
    if m is None:
        raise ValueError("no 'from sklearn.model_selection import (...)' block to swap")
    lines = m.group("names").splitlines(keepends=True)
    kept = [ln for ln in lines if ln.strip().rstrip(",") not in SWAPPED]
    if len(lines) - len(kept) != len(SWAPPED):
        raise ValueError(f"expected one line each for {SWAPPED} in the import block, found {len(lines) - len(kept)}")
    block = f"from sklearn.model_selection import ({''.join(kept)})\n"
    return source[: m.start()] + block + MLPX_IMPORT + source[m.end() :]


def test_swap_imports_changes_only_the_two_imports():
    source = installed_suite(SUITE).read_text()
    swapped = swap_imports(source)
    diff = [d for d in difflib.ndiff(source.splitlines(), swapped.splitlines()) if d[:1] in "+-"]
    assert sorted(diff) == sorted([f"-     {n}," for n in SWAPPED] + ["+ " + MLPX_IMPORT.strip()])
    with pytest.raises(ValueError):
        swap_imports(source.replace("    RandomizedSearchCV,\n", ""))


@pytest.mark.slow
def test_scikit_learns_search_tests_pass_on_mlpx_searches_wherever_they_pass_on_scikit_learns(tmp_path):
    import sklearn

    source = installed_suite(SUITE).read_text()
    runs = {"control": source, "swapped": swap_imports(source)}
    logs = run_side_by_side(tmp_path, "test_search.py", runs, {"conftest.py": _RECORDER})
    imported = {name: json.loads((tmp_path / name / "imported.json").read_text()) for name in runs}
    assert list(imported["control"].values()) == [["sklearn.model_selection._search"] * 2]
    assert list(imported["swapped"].values()) == [["mlpx.model_selection"] * 2]
    control, swapped = (outcomes(tmp_path / name / "junit.xml") for name in runs)
    assert control.keys() == swapped.keys() and len(control) > 100
    failed = {name: sorted(t for t, s in res.items() if s == "failed") for name, res in (("control", control),
                                                                                          ("swapped", swapped))}
    counts = {name: {s: sum(v == s for v in res.values()) for s in ("passed", "failed", "skipped")}
              for name, res in (("control", control), ("swapped", swapped))}
    print(f"scikit-learn {sklearn.__version__} test_search.py: {counts}")
    assert failed["swapped"] == failed["control"], (
        f"scikit-learn {sklearn.__version__}: {counts}; failing only with mlpx's searches: "
        f"{sorted(set(failed['swapped']) - set(failed['control']))}\n{logs['swapped'][-4000:]}")
