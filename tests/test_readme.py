"""Every code block of README.md runs as written, in order.

Python blocks run one after another in one namespace (as a reader pastes them into
one session), in a temporary folder. A block preceded by
``<!-- readme-test: skip (reason) -->`` is skipped with that reason (GPU and MPI
blocks). Shell blocks install packages and start long jobs (the benchmark suite,
the test suite itself, the documentation build), so they are not run here; each
command is checked instead: every ``pip install -e ".[extras]"`` names extras that
pyproject.toml defines, and every ``python -m module`` names a module that imports.
The documentation build command must also be the one .ci/run runs.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"(?P<skip><!-- readme-test: skip \((?P<reason>[^)]*)\) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)\n```",
                   re.S)


def _blocks() -> list[tuple[str, str, str | None]]:
    return [(m["lang"], m["code"], m["reason"]) for m in FENCE.finditer(README.read_text(encoding="utf-8"))]


def _extras() -> set[str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(data["project"]["optional-dependencies"])


def _commands() -> list[str]:
    out = []
    for lang, code, _ in _blocks():
        if lang in ("bash", "sh", "console"):
            for line in code.splitlines():
                line = line.split("#", 1)[0].strip()
                out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


def test_readme_is_short_and_starts_with_the_two_setup_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    first = _blocks()[0]
    assert first[0] == "bash"
    assert 'pip install -e ".[bench]" && python -m benchmarks' in first[1]
    assert 'pip install -e ".[test]" && python -m pytest' in first[1]


def test_readme_quick_start_is_at_most_30_lines() -> None:
    text = README.read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(quick.strip().splitlines()) <= 30


def test_readme_shell_commands_name_real_extras_and_modules() -> None:
    extras = _extras()
    commands = _commands()
    assert commands, "README has no shell commands"
    for command in commands:
        argv = shlex.split(command)
        if argv[:3] == ["pip", "install", "-e"]:
            spec = argv[3]
            match = re.fullmatch(r"\.\[([\w,-]+)\]", spec)
            assert match, f"unexpected install target {spec!r} in {command!r}"
            unknown = set(match[1].split(",")) - extras
            assert not unknown, f"{command!r}: pyproject.toml has no extra {sorted(unknown)}"
        elif argv[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(argv[2]) is not None, f"{command!r}: no module {argv[2]}"
        else:
            pytest.fail(f"README command {command!r} is neither a pip install of extras nor python -m")


def test_readme_docs_build_command_is_the_one_ci_runs() -> None:
    build = [c for c in _commands() if c.startswith("python -m sphinx")]
    assert len(build) == 1
    assert build[0] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_readme_python_blocks_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    ran = skipped = 0
    for i, (lang, code, reason) in enumerate(_blocks()):
        if lang != "python":
            continue
        if reason is not None:
            skipped += 1
            continue
        exec(compile(code, f"README.md python block {i}", "exec"), namespace)
        ran += 1
    assert ran >= 1
    # What the quick start promises: a trained network, a file it loads back from.
    model, restored = namespace["model"], namespace["restored"]
    X_test = namespace["X_test"]
    assert (tmp_path / "digits.npz").exists()
    assert (restored.predict(X_test) == model.predict(X_test)).all()
    assert model.evaluate(X_test, namespace["y_test"])["accuracy"] > 0.9


@pytest.mark.parametrize("reason", [r for _, _, r in _blocks() if r is not None] or [None])
def test_readme_blocks_not_run_here(reason: str | None) -> None:
    """Report each README block the test above leaves out, with its reason."""
    if reason is None:
        return
    pytest.skip(f"README block not run: {reason}")
