"""Which of the frontend's modules run as compiled code (setup.py's mypyc build), and which
compiled builds are older than their source."""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

_PACKAGE_DIR = Path(__file__).parent


def _builds() -> dict[str, Path]:
    """Each module with a compiled build for this interpreter beside it, by name."""
    builds: dict[str, Path] = {}
    for path in _PACKAGE_DIR.iterdir():
        # The most specific suffix comes first: "x.cpython-311-x86_64-linux-gnu.so" is x.
        suffix = next((s for s in EXTENSION_SUFFIXES if path.name.endswith(s)), None)
        if suffix is not None:
            builds[path.name[: -len(suffix)]] = path
    return builds


def compiled_modules() -> list[str]:
    """The modules that Python imports from their compiled build, not their source."""
    return sorted(_builds())


def stale_modules() -> list[str]:
    """The compiled modules whose source changed after the build: Python still imports the
    build, so the change does not run until setup.py builds again (scripts/setup)."""
    return sorted(
        name
        for name, build in _builds().items()
        if (source := _PACKAGE_DIR / f"{name}.py").exists()
        and source.stat().st_mtime > build.stat().st_mtime
    )
