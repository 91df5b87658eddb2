"""The per-query modules run compiled wherever the build had a C compiler."""

from __future__ import annotations

import shutil
from importlib.machinery import EXTENSION_SUFFIXES

import pytest

import query_frontend.batching
import query_frontend.predictor
from query_frontend.native import compiled_modules, stale_modules


def test_the_per_query_modules_are_compiled_and_current() -> None:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler here: the build leaves every module pure Python")
    assert {"batching", "cache", "codec", "metrics", "predictor", "routing"} <= set(
        compiled_modules()
    )
    assert stale_modules() == []
    for module in (query_frontend.batching, query_frontend.predictor):
        assert module.__file__ is not None
        assert module.__file__.endswith(tuple(EXTENSION_SUFFIXES))
