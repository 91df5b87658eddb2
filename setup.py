"""Compiles the query frontend's per-query modules to C with mypyc, or leaves them pure Python.

Everything else about the package is in pyproject.toml. Compiled, the frontend spends about a
sixth less CPU per query (see the README's benchmark section). The build needs a C compiler;
without one, or with CLIPPER_COMPILE=0, the same modules run as plain Python.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

# The modules every query passes through, minus the aiohttp side of the HTTP layer: server.py,
# whose cleanup contexts are async generators, and predict_site.py, whose base class has
# __slots__; mypyc compiles neither. Compiled, the predict protocol took the frontend's CPU
# per no-op query from 87-119 to 75-100 us (3 alternating rounds at c=64).
COMPILED_MODULES = [
    "query_frontend/arrival.py",
    "query_frontend/batching.py",
    "query_frontend/cache.py",
    "query_frontend/codec.py",
    "query_frontend/errors.py",
    "query_frontend/metrics.py",
    "query_frontend/predict_protocol.py",
    "query_frontend/predictor.py",
    "query_frontend/routing.py",
    "query_frontend/wire.py",
]

# Third-party packages are hidden from mypyc (--no-site-packages), so it handles their values as
# plain objects. Compiled code checks at run time every value against its declared type, and
# a stub that is wrong (pysimdjson's as_buffer says bytes and returns a buffer object) would
# then raise where Python runs on; what mypyc could see would also depend on the environment
# the build runs in. The project's own strict type check is scripts/check, not this.
_MYPY_FLAGS = ["--config-file", "", "--ignore-missing-imports", "--no-site-packages"]


def _compiled_extensions() -> list[Extension]:
    if os.environ.get("CLIPPER_COMPILE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("mypyc is not installed: the frontend stays pure Python", file=sys.stderr)
        return []
    os.environ["MYPYPATH"] = os.pathsep.join(["protos", "admin"])
    extensions: list[Extension] = mypycify(
        [*_MYPY_FLAGS, *COMPILED_MODULES], group_name="query_frontend_native"
    )
    for extension in extensions:
        # No C compiler: the build goes on and these modules run from their Python source.
        extension.optional = True
    return extensions


setup(ext_modules=_compiled_extensions())
