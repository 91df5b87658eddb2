"""The package version and image namespace, which together tag the project's images."""

import os

__version__ = "0.5.0"
__registry__ = os.environ.get("CLIPPER_REGISTRY", "clipper")
