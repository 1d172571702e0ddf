"""Sphinx configuration of the mlpx documentation.

Build (from the repository root; warnings and broken cross-references are errors)::

    python -m sphinx -W -n --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import mlpx  # noqa: E402
import mlpx_api  # noqa: E402

project = "mlpx"
author = "the mlpx developers"
copyright = "the mlpx developers"
release = mlpx.__version__
version = release

extensions = [
    "mlpx_api",  # writes docs/api/*.rst from mlpx.__all__ and the public modules
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "sphinx_copybutton",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "_templates", "_ext", "gallery/**/*.ipynb", "**/*.zip", "**/*.json", "**/*.md5"]
root_doc = "index"
default_role = "literal"
nitpicky = True

# -- API reference -------------------------------------------------------------
autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_typehints = "none"  # types are in the numpydoc sections, with shapes
autodoc_inherit_docstrings = True
autodoc_member_order = "bysource"
add_module_names = False
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_attributes_as_param_list = True
# numpydoc's validation runs in tests/test_docs.py (over every public docstring, with
# mlpx_api.NUMPYDOC_CHECKS), not at build time: the build would also flag overrides
# that inherit their base's docstring, which the test accepts.
numpydoc_validation_checks: set[str] = set()

# No network at build time (intersphinx cannot fetch other projects' inventories),
# so references to other libraries are shown as code rather than linked; so are
# references into the engine's internal modules (mlpx_api.INTERNAL), which the
# reference does not document.
_external = r"(numpy|np|scipy|sklearn|torch|cupy|cupyx|jax|onnx|onnxruntime|skl2onnx|mpi4py|MPI|ml_dtypes|tqdm|threadpoolctl|array_api_strict|numba|typing|collections|concurrent|pathlib|os|io|threading|logging|types|builtins)(\..*)?"
_internal = "|".join(m.replace(".", r"\.") for m in mlpx_api.INTERNAL)
nitpick_ignore_regex = [
    (r"py:.*", _external),
    (r"py:.*", rf"({_internal})(\..*)?"),
    (r"py:.*", r".*\._[A-Za-z].*"),  # private names (show-inheritance of private bases)
]

# -- Gallery ---------------------------------------------------------------------
# Scripts named plot_*.py run at build time; the others (GPU, MPI) are shown only.
sphinx_gallery_conf = {
    "examples_dirs": [str(HERE.parent / "examples")],
    "gallery_dirs": ["gallery"],
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "download_all_examples": False,
    "plot_gallery": os.environ.get("MLPX_DOCS_PLOT_GALLERY", "True"),
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "min_reported_time": 0,
    "show_memory": False,
    "reference_url": {},
    "matplotlib_animations": False,
    "capture_repr": ("_repr_html_", "__repr__"),
    "default_thumb_file": None,
    "write_computation_times": True,
}

# -- HTML ------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"mlpx {release}"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 6,
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
}
html_show_sourcelink = False
html_context = {"default_mode": "light"}
