"""The documentation is checked like the code.

* Every public name (``mlpx.__all__`` and the ``__all__`` of every public module,
  as ``docs/_ext/mlpx_api.py`` defines them) is in the generated API reference.
* numpydoc's validation passes on every public docstring, with the checks chosen in
  ``mlpx_api.NUMPYDOC_CHECKS``, with no exceptions.
* Every docstring example runs as a doctest. Examples that need a GPU carry
  ``# doctest: +GPU`` and are skipped without one.

The site build itself (``python -m sphinx -W -n ...``) runs in ``.ci/run``.
"""

from __future__ import annotations

import doctest
import importlib
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("numpydoc", reason="the docs checks need numpydoc (in the test extra)")
from sphinx.pycode import ModuleAnalyzer  # noqa: E402

import mlpx  # noqa: E402
from mlpx.backends import cuda_available  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
import mlpx_api  # noqa: E402

GPU = doctest.register_optionflag("GPU")

TARGETS = mlpx_api.validation_targets()


def _errors(name: str) -> list[tuple[str, str]]:
    return mlpx_api.validation_errors(name)


@pytest.mark.parametrize("name", TARGETS)
def test_public_docstring_passes_numpydoc_validation(name: str) -> None:
    errors = _errors(name)
    assert not errors, "\n".join(f"{name}: {code} {msg}" for code, msg in errors)


def test_validation_catches_a_parameter_documented_under_raises() -> None:
    # The check must fail on what the issue names: a "Raises" entry that is really
    # a parameter, and a parameter left out.
    def bad(x: int, precision: str | None = None) -> int:
        """Add one.

        Parameters
        ----------
        x : int
            A number.

        Returns
        -------
        int
            ``x + 1``.

        Raises
        ------
        precision : str
            Misplaced.
        """
        return x + 1

    mod = type(sys)("mlpx_doc_probe")
    mod.bad = bad  # type: ignore[attr-defined]
    bad.__module__ = "mlpx_doc_probe"
    sys.modules["mlpx_doc_probe"] = mod
    try:
        codes = {code for code, _ in _errors("mlpx_doc_probe.bad")}
    finally:
        del sys.modules["mlpx_doc_probe"]
    assert "PR01" in codes


def test_every_public_name_is_in_the_api_reference(tmp_path: Path) -> None:
    modules = mlpx_api.write_pages(tmp_path)
    text = {m: (tmp_path / f"{m}.rst").read_text(encoding="utf-8") for m in modules}
    listed: set[str] = set()
    for modname, page in text.items():
        for line in page.splitlines():
            entry = re.fullmatch(r"   ([A-Za-z_][\w.]*)", line)
            if entry:
                listed.add(f"{modname}.{entry[1]}")
            link = re.fullmatch(rf"\* ``{re.escape(modname)}\.(\w+)``: :py:obj:`([\w.]+)`", line)
            if link:
                assert link[2] in listed or any(link[2] == n for n in listed), line
                listed.add(f"{modname}.{link[1]}")
    expected = {f"mlpx.{name}" for name in mlpx.__all__}
    for modname in mlpx_api.public_modules():
        mod = importlib.import_module(modname)
        expected |= {f"{modname}.{name}" for name in getattr(mod, "__all__", [])}
    missing = sorted(expected - listed)
    assert not missing, f"public names missing from the API reference: {missing}"
    index = (tmp_path / "index.rst").read_text(encoding="utf-8")
    assert all(f"   {m}" in index for m in modules)


def test_every_module_is_public_or_internal_with_a_reason() -> None:
    public = set(mlpx_api.public_modules())
    for modname in mlpx_api.all_modules():
        assert modname in public or modname in mlpx_api.INTERNAL or mlpx_api.shadowed(modname), modname
    for modname, reason in mlpx_api.INTERNAL.items():
        importlib.import_module(modname)  # a stale entry fails here
        assert reason.strip()


def test_every_public_constant_has_a_doc_comment() -> None:
    documented, _ = mlpx_api.entries()
    for entry in documented:
        if entry.kind != "data":
            continue
        name = entry.name.rsplit(".", 1)[1]
        homes = [m for m in mlpx_api.all_modules() if m != "mlpx"
                 and name in getattr(importlib.import_module(m), "__all__", [])]
        docs = [ModuleAnalyzer.for_module(m).find_attr_docs().get(("", name)) for m in homes]
        assert any(docs), f"{entry.name} has no '#:' comment or docstring where it is defined"


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for modname in mlpx_api.all_modules():
        mod = importlib.import_module(modname)
        for test in finder.find(mod, modname, globs={}):
            if test.examples:
                tests.append(test)
    return sorted(tests, key=lambda t: t.name)


@pytest.mark.parametrize("test", _doctests(), ids=lambda t: t.name)
def test_docstring_examples_run(test: doctest.DocTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples that save files write them here
    has_gpu = cuda_available()
    for example in test.examples:
        if example.options.get(GPU) and not has_gpu:
            example.options[doctest.SKIP] = True
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    result = runner.run(test, out=report.append)
    assert result.failed == 0, "".join(report)
