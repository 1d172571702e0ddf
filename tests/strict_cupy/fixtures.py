"""pytest fixtures for the strict CuPy stand-in (import them into a test module).

``strict_cupy``
    The stand-in installed for one test (a :class:`strict_cupy.StandIn`). Parametrise
    it indirectly with a dict of :class:`strict_cupy.Config` fields::

        @pytest.mark.parametrize("strict_cupy", [{"n_devices": 1}], indirect=True)

``gpu``
    ``mlpx.backends.get_backend("gpu")`` on the installed stand-in.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from strict_cupy import StandIn, installed

__all__ = ["gpu", "strict_cupy"]


@pytest.fixture
def strict_cupy(request: pytest.FixtureRequest) -> Iterator[StandIn]:
    settings: dict[str, Any] = getattr(request, "param", None) or {}
    with installed(**settings) as sc:
        yield sc


@pytest.fixture
def gpu(strict_cupy: StandIn) -> Any:
    from mlpx.backends import get_backend

    return get_backend("gpu")
