"""mlpx benchmark suite: BLAS vs cuBLAS, and mlpx against its peers.

Run it from the repository root::

    python -m benchmarks                 # --quick: every section at small sizes (~4.5 min, 2 cores)
    python -m benchmarks --full          # the real sizes (tens of minutes on a small CPU)
    python -m benchmarks --only gemm,train --backend cpu
    python -m benchmarks --compare old/results.json new/results.json

Sections: ``gemm`` (:mod:`benchmarks.gemm`), ``transfer`` (:mod:`benchmarks.transfer`),
``train`` (:mod:`benchmarks.train`), ``scaling`` (:mod:`benchmarks.scaling`) and ``search``
(:mod:`benchmarks.search`). Each run writes ``report.md``, ``results.json``
(schema: :mod:`benchmarks.schema`) and PNG plots into a new folder under the
git-ignored ``benchmarks/runs/`` (:mod:`benchmarks.run_folder`); the committed
reference results, ``benchmarks/results/<machine-tag>/``, change only with
``--update-reference``.

Python API (used by the tests)::

    from benchmarks import run_suite, make_config
    doc = run_suite(make_config("tiny"), out_dir="/tmp/bench")   # out_dir=None: a new benchmarks/runs/ folder
"""

from benchmarks.config import Config, make_config
from benchmarks.runner import run_suite
from benchmarks.schema import SCHEMA_VERSION, validate

__all__ = ["SCHEMA_VERSION", "Config", "make_config", "run_suite", "validate"]
