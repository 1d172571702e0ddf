"""What the API reference documents, and the generator of its pages.

One source of truth for the site (``docs/conf.py`` loads this file as a Sphinx
extension) and for the tests that check the documentation (``tests/test_docs.py``):

* the **public modules** are every module of ``mlpx`` and ``mlpx.backends`` whose
  name has no leading underscore, except those in :data:`INTERNAL` (each with its
  reason); a new module is public, and so documented, by default;
* the **public names** are ``mlpx.__all__`` and the ``__all__`` of every public
  module; each object is documented once, at its first public home (``mlpx`` first),
  and the other homes link to it;
* the pages under ``docs/api/`` are written from those lists at every build, so a
  name added to an ``__all__`` appears in the reference without editing a file.

The numpydoc validation settings (:data:`NUMPYDOC_CHECKS`) live here too, so that the
build and the test apply the same rules.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOTS = ("mlpx", "mlpx.backends")

#: Modules left out of the API reference: the engine's plumbing, which other mlpx
#: modules call and users do not (their names may change without notice). Each
#: keeps docstrings for the developers; the design page describes them.
INTERNAL: dict[str, str] = {
    "mlpx.data": "the training loop's minibatch sources; users pass arrays to fit",
    "mlpx.member_batches": "each member's minibatches and held-out rows of one data set on the device",
    "mlpx.metrics": "the held-out scorer behind evaluate, score and early stopping",
    "mlpx.member_step": "the compiled CPU step every network runs (a Stack's members, or one network)",
    "mlpx.updates": "the optimizers' update kernels over the members' parameter buffer",
    "mlpx.validation": "input checks run by fit and predict (InvalidParameterError is public, in mlpx)",
    "mlpx.locking": "the readers-writer lock guarding a model's parameters",
    "mlpx.network_step": "the passes and the training step over the member axis (Network's base; documented there)",
    "mlpx.streams": ("the training loop's sources for streams of batches (users pass them to fit; "
                     "BlockShuffle is public, in mlpx)"),
    "mlpx.chunked": ("the chunked reader of lazy and on-disk arrays (users pass the arrays to fit; "
                     "BlockShuffle is public, in mlpx)"),
    "mlpx.prefetch": "the background reader that fetches the next batches while a step computes",
    "mlpx.archive": "the bounded zip reader behind mlpx.load (ModelFileError is public, in mlpx)",
    "mlpx.generators": "the random generators' state records that checkpoints carry",
    "mlpx.backends.cuda": "CUDA source snippets and the elementwise-kernel registry of the GPU backend",
    "mlpx.backends.cuda_compile": "offline compilation of the CUDA kernels, for the test suite",
    "mlpx.backends.jit": "the lazy numba decorator behind the CPU kernels",
}

#: numpydoc checks run on every public docstring: all of numpydoc's, except
#:
#: * ``SA01`` ("See Also" section missing) and ``EX01`` ("Examples" section missing):
#:   the user guide and the gallery carry the examples and the cross-links; asking
#:   every small helper for both would add boilerplate, not information;
#: * ``ES01`` (extended summary missing): a one-line summary is enough for many
#:   functions whose parameters say the rest;
#: * ``RT02`` (the name of a returned value should be omitted): mlpx names its
#:   return values with their shapes (``H : array, shape (n, k)``), which reads
#:   better than an anonymous type when a function returns several arrays;
#: * ``GL01`` (summary on the line after the opening quotes) and ``SS05`` (summary
#:   in the infinitive, "Return" not "Returns"): house style writes the summary on
#:   the opening line and as a description ("The model's loss on ...");
#: * ``GL02`` (closing quotes on a line of their own): a one-line docstring closes on
#:   its line.
NUMPYDOC_CHECKS: set[str] = {"all", "SA01", "EX01", "ES01", "RT02", "GL01", "GL02", "SS05"}


@dataclass(frozen=True)
class Entry:
    """One documented object.

    Attributes
    ----------
    name : str
        The dotted name it is documented under (``mlpx.Sequential``).
    module : str
        The public module whose page lists it.
    obj : object
    kind : str
        ``"class"``, ``"exception"``, ``"function"`` or ``"data"``.
    """

    name: str
    module: str
    obj: Any
    kind: str


def _walk(root: str) -> list[str]:
    pkg = importlib.import_module(root)
    names = [root]
    for info in pkgutil.walk_packages(pkg.__path__, root + "."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    return names


def all_modules() -> list[str]:
    """Every importable module under :data:`ROOTS` without a private part in its name."""
    found: list[str] = []
    for root in ROOTS:
        for name in _walk(root):
            if name not in found:
                found.append(name)
    return sorted(found)


def shadowed(modname: str) -> bool:
    """Whether a package attribute of the same name hides the module.

    ``mlpx.backends.kernel`` is the decorator ``kernel``, which the module of that
    name defines; such a module's public names are all documented in the package.

    Parameters
    ----------
    modname : str

    Returns
    -------
    bool
    """
    parent, _, leaf = modname.rpartition(".")
    if not parent:
        return False
    attr = getattr(importlib.import_module(parent), leaf, None)
    return attr is not None and not isinstance(attr, ModuleType)


def public_modules() -> list[str]:
    """The modules the API reference documents: ``mlpx`` first, then alphabetical."""
    mods = [m for m in all_modules() if m not in INTERNAL and not shadowed(m)]
    return ["mlpx"] + [m for m in mods if m != "mlpx"]


def _kind(obj: Any) -> str:
    from mlpx.backends import Kernel

    if isinstance(obj, Kernel):
        return "kernel"  # documented as data (not callable), validated as its generic function
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if inspect.isroutine(obj):
        return "function"
    return "data"  # constants and type aliases (Literal[...] is callable, not a routine)


def _key(module: str, name: str, obj: Any) -> Any:
    # Classes and functions are the same object wherever they are re-exported; a
    # constant is identified by its name in its defining module instead (small ints
    # are shared by every module that holds one).
    if inspect.isclass(obj) or inspect.isroutine(obj):
        return id(obj)
    return ("data", name, id(obj)) if isinstance(obj, (dict, list, tuple, set)) else (module, name)


def entries() -> tuple[list[Entry], dict[str, list[tuple[str, str]]]]:
    """The documented objects, and for each module the names it re-exports.

    Returns
    -------
    documented : list of Entry
        Every public object once, at its first public home.
    links : dict
        Module name -> ``(name, documented_name)`` of the public names it shares
        with an earlier module.
    """
    seen: dict[Any, str] = {}
    documented: list[Entry] = []
    links: dict[str, list[tuple[str, str]]] = {}
    for modname in public_modules():
        mod = importlib.import_module(modname)
        for name in sorted(getattr(mod, "__all__", [])):
            obj = getattr(mod, name)
            key = _key(modname, name, obj)
            full = f"{modname}.{name}"
            if key in seen:
                links.setdefault(modname, []).append((name, seen[key]))
                continue
            seen[key] = full
            documented.append(Entry(full, modname, obj, _kind(obj)))
    return documented, links


def _inherits_doc(cls: type, name: str, value: Any) -> bool:
    # An override without a docstring shows its base's (autodoc_inherit_docstrings),
    # which is validated where the base defines it.
    if getattr(value, "__doc__", None):
        return False
    return any(getattr(vars(base).get(name), "__doc__", None) for base in cls.__mro__[1:])


def _documented_classes() -> frozenset[int]:
    global _DOCUMENTED
    if _DOCUMENTED is None:
        _DOCUMENTED = frozenset(id(e.obj) for e in entries()[0] if inspect.isclass(e.obj))
    return _DOCUMENTED


_DOCUMENTED: frozenset[int] | None = None


def folded_bases(cls: type) -> list[type]:
    """The bases whose public members a class's page documents as the class's own.

    They are the mlpx classes the reference does not document itself (a private
    class, or one of an internal module: ``NetworkStep`` under ``Network``, the
    searches' ``_StackedSearch``), unless a documented base in between documents
    them (``Sequential`` leaves ``NetworkStep``'s methods to ``Network``).

    Parameters
    ----------
    cls : type

    Returns
    -------
    list of type
        In method resolution order.
    """
    documented = _documented_classes()
    later = cls.__mro__[1:]

    def mlpx_class(b: type) -> bool:
        return str(getattr(b, "__module__", "")).split(".")[0] == "mlpx"

    return [b for b in later if mlpx_class(b) and id(b) not in documented
            and not any(id(c) in documented and issubclass(c, b) for c in later)]


def inherited_exclusions(cls: type) -> str:
    """The ``:inherited-members:`` argument of a class's page: every class in its MRO
    whose members are documented elsewhere (documented mlpx bases, other libraries,
    ``object``), so the page shows its own and its :func:`folded_bases`' members.

    Parameters
    ----------
    cls : type

    Returns
    -------
    str
        Comma-separated class names.
    """
    keep = {cls, *folded_bases(cls)}
    return ", ".join(dict.fromkeys(b.__name__ for b in cls.__mro__ if b not in keep))


def members(cls: type) -> list[str]:
    """The public methods and properties a class's page documents.

    Those the class defines, or one of its :func:`folded_bases` does. An override
    without a docstring of its own is left out: it is documented, and validated, by
    the base class it overrides.

    Parameters
    ----------
    cls : type

    Returns
    -------
    list of str
        Sorted member names.
    """
    own = [cls, *folded_bases(cls)]
    out = []
    for name in dict.fromkeys(n for b in own for n in vars(b)):
        if name.startswith("_"):
            continue
        definer = next(b for b in cls.__mro__ if name in vars(b))
        if definer not in own:
            continue
        value = vars(definer)[name]
        func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        if not (inspect.isfunction(func) or isinstance(func, property)):
            func = getattr(cls, name, None)  # descriptors such as scikit-learn's available_if
        foreign = not str(getattr(func, "__module__", None) or "mlpx").startswith("mlpx")
        if foreign:  # scikit-learn's generated set_*_request methods: documented there
            continue
        if (inspect.isfunction(func) or isinstance(func, property)) and not _inherits_doc(definer, name, func):
            out.append(name)
    return sorted(out)


def validation_targets() -> list[str]:
    """Every import path numpydoc validates: the functions, classes and class members."""
    documented, _ = entries()
    targets = []
    for entry in documented:
        if entry.kind == "data":
            continue
        targets.append(entry.name)
        if entry.kind in ("class", "exception"):
            targets.extend(f"{entry.name}.{m}" for m in members(entry.obj))
    return targets


def validation_errors(name: str) -> list[tuple[str, str]]:
    """numpydoc's findings on one public object, under :data:`NUMPYDOC_CHECKS`.

    Parameters
    ----------
    name : str
        A name from :func:`validation_targets`.

    Returns
    -------
    list of (str, str)
        ``(code, message)`` pairs; empty when the docstring passes.
    """
    from numpydoc.validate import Validator, get_doc_object, validate

    from mlpx.backends import Kernel

    module, _, attr = name.rpartition(".")
    owner = importlib.import_module(module) if module in all_modules() else None
    obj = getattr(owner, attr, None) if owner is not None else None
    if isinstance(obj, Kernel):
        # Kernels are called through a backend; their generic definition carries the
        # signature (after the namespace argument ``xp``) and the docstring.
        found = validate(get_doc_object(obj.generic))  # type: ignore[arg-type]
        found["errors"] = [e for e in found["errors"] if e[1] != "Parameters {'xp'} not documented"]
    else:
        found = validate(name)
    checks = NUMPYDOC_CHECKS
    return [(code, msg) for code, msg in found["errors"] if (code not in checks) == ("all" in checks)]


def _title(mod: ModuleType, modname: str) -> str:
    doc = inspect.getdoc(mod) or ""
    first = doc.split("\n", 1)[0].strip().rstrip(".")
    first = first.split(":", 1)[1].strip() if first.startswith(modname + ":") else first
    return first if first.startswith("scikit-learn") else first[:1].upper() + first[1:]


def _heading(text: str, char: str) -> str:
    return f"{text}\n{char * len(text)}\n"


def write_pages(outdir: Path) -> list[str]:
    """Write one page per public module into ``outdir`` (and ``index.rst``).

    Parameters
    ----------
    outdir : Path
        ``docs/api``; its ``.rst`` files are generated (and ignored by git).

    Returns
    -------
    list of str
        The module names written, in toctree order.
    """
    documented, links = entries()
    outdir.mkdir(parents=True, exist_ok=True)
    # Pages of names that left an __all__ (renamed, removed) must not linger.
    for old in [*outdir.glob("*.rst"), *(outdir / "generated").glob("*.rst")]:
        old.unlink()
    modules = public_modules()
    by_module: dict[str, list[Entry]] = {}
    for entry in documented:
        by_module.setdefault(entry.module, []).append(entry)
    for modname in modules:
        mod = importlib.import_module(modname)
        lines = [f".. _api-{modname}:", "", _heading(f"``{modname}``", "=")]
        lines += [f".. automodule:: {modname}", "   :no-members:", ""]
        own = by_module.get(modname, [])
        if modname == "mlpx":
            # Group the top-level names by the module that defines them.
            groups: dict[str, list[Entry]] = {}
            known = all_modules()
            for entry in own:
                home = getattr(entry.obj, "__module__", None) if entry.kind in ("class", "exception", "function") else None
                home = home.rsplit("._", 1)[0] if home else None  # mlpx.estimators._classifier -> mlpx.estimators
                if home is None or home not in known:
                    home = next((m for m in modules[1:] if entry.name.split(".")[-1]
                                 in getattr(importlib.import_module(m), "__all__", [])), "mlpx")
                groups.setdefault(home, []).append(entry)
            for home in sorted(groups):
                title = _title(importlib.import_module(home), home) or home
                lines += [_heading(title, "-"), f"From :mod:`{home}`.", ""]
                lines += _autosummary(groups[home], modname)
        elif own:
            lines += _autosummary(own, modname)
        shared = links.get(modname, [])
        if shared:
            lines += [_heading("Also here", "-"),
                      "Public names of this module documented where they are first exported:", ""]
            lines += [f"* ``{modname}.{name}``: :py:obj:`{target}`" for name, target in shared] + [""]
        (outdir / f"{modname}.rst").write_text("\n".join(lines), encoding="utf-8")
    index = [".. _api:", "", _heading("API reference", "="),
             "Every name in ``mlpx.__all__`` and in the ``__all__`` of the public modules,",
             "generated from the docstrings. Modules not listed here are the engine's internals",
             "(see :doc:`/guide/design`).", "",
             ".. toctree::", "   :maxdepth: 1", ""]
    index += [f"   {m}" for m in modules]
    (outdir / "index.rst").write_text("\n".join(index) + "\n", encoding="utf-8")
    return modules


def _autosummary(group: list[Entry], modname: str) -> list[str]:
    out = [".. autosummary::", "   :toctree: generated", "   :nosignatures:", ""]
    out += [f"   {entry.name[len(modname) + 1:]}" for entry in group]
    return out + [""]


def aliases() -> dict[str, str]:
    """Other dotted names of documented objects -> the name they are documented under.

    Returns
    -------
    dict
        The defining module's name (``mlpx.model.Sequential``) and every other
        public home (``mlpx.backends.get_backend``) of each documented object.
    """
    documented, links = entries()
    out: dict[str, str] = {}
    for entry in documented:
        home = getattr(entry.obj, "__module__", None)
        qual = getattr(entry.obj, "__qualname__", None)
        if entry.kind != "data" and home and qual and f"{home}.{qual}" != entry.name:
            out[f"{home}.{qual}"] = entry.name
    for modname, shared in links.items():
        for name, target in shared:
            out[f"{modname}.{name}"] = target
    return out


def _candidates(target: str, module: str | None, cls: str | None) -> list[str]:
    target = target.lstrip("~.")
    found = [target]
    if target.startswith("backends."):
        found.append("mlpx." + target)
    if module:
        found.append(f"{module}.{target}")
        if cls:
            found.append(f"{module}.{cls}.{target}")
    return found


def _rename(name: str, table: dict[str, str]) -> str:
    # Replace the longest known prefix: mlpx.model.Sequential.fit -> mlpx.Sequential.fit
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head in table:
            return ".".join([table[head], *parts[cut:]])
    return name


def _by_suffix(env: Any, target: str) -> str | None:
    # The one documented object whose name ends in ``.target`` (``Backend`` from a
    # docstring shown in another module's page), if there is exactly one.
    suffix = "." + target.lstrip("~.")
    objects = env.get_domain("py").objects
    names = [name for name, entry in objects.items() if name.endswith(suffix) and not entry.aliased]
    return names[0] if len(names) == 1 else None


def _missing_reference(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    # References written against a defining module (mlpx.model.Sequential.fit) or
    # relative to the current module or class (Sequential.fit, fit) find the object
    # where it is documented (mlpx.Sequential.fit).
    if node.get("refdomain") != "py":
        return None
    table = app.env.mlpx_aliases if hasattr(app.env, "mlpx_aliases") else None
    if table is None:
        table = app.env.mlpx_aliases = aliases()
    domain = env.get_domain("py")
    for candidate in _candidates(node["reftarget"], node.get("py:module"), node.get("py:class")):
        renamed = _rename(candidate, table)
        found = domain.resolve_any_xref(env, node["refdoc"], app.builder, renamed, node, contnode)
        if found:
            return found[0][1]
    unique = _by_suffix(env, node["reftarget"])
    if unique:
        found = domain.resolve_any_xref(env, node["refdoc"], app.builder, unique, node, contnode)
        if found:
            return found[0][1]
    return None


_TRAILING_UNDERSCORE = re.compile(r"""(?<![\\\w])([A-Za-z]\w*[A-Za-z0-9])_(?=[\s,.;:)\]"']|$)""")


def _escape_fitted(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    # Fitted attributes end in an underscore (``n_features_in_``); written bare in a
    # shape (``(n, n_features_in_)``), reST would read them as link references.
    literal_indent: int | None = None  # inside a literal block (after "::") or doctest
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if literal_indent is not None:
            if not stripped or indent > literal_indent:
                continue
            literal_indent = None
        if stripped.startswith(">>>"):
            literal_indent = indent - 1
            continue
        if stripped.endswith("::"):
            literal_indent = indent
        parts = line.split("`")
        for j in range(0, len(parts), 2):  # outside backquotes
            parts[j] = _TRAILING_UNDERSCORE.sub(r"\1\\_", parts[j])
        lines[i] = "`".join(parts)


def _skip_foreign(app: Any, what: str, name: str, obj: Any, skip: bool, options: Any) -> bool | None:
    # Methods scikit-learn attaches to every estimator (set_fit_request, ...) are
    # documented by scikit-learn.
    module = getattr(obj, "__module__", None)
    if isinstance(module, str) and not module.startswith("mlpx") and what == "class":
        return True
    return None


def _class_context(app: Any, config: Any) -> None:
    # The class template reads each documented class's :func:`inherited_exclusions`.
    classes = {e.name: inherited_exclusions(e.obj) for e in entries()[0] if inspect.isclass(e.obj)}
    config.autosummary_context = {**config.autosummary_context, "inherited_exclusions": classes}


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point: write the API pages before the sources are read.

    Parameters
    ----------
    app : sphinx.application.Sphinx

    Returns
    -------
    dict
        The extension's metadata.
    """
    app.setup_extension("sphinx.ext.autodoc")
    write_pages(Path(app.srcdir) / "api")
    app.connect("config-inited", _class_context)
    app.connect("missing-reference", _missing_reference)
    app.connect("autodoc-process-docstring", _escape_fitted, priority=600)
    app.connect("autodoc-skip-member", _skip_foreign)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
