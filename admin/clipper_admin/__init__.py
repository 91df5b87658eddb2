"""clipper_admin: Clipper's client API (ClipperConnection, container managers, deployers)."""

from clipper_admin import deployers
from clipper_admin.clipper_admin import DEFAULT_PREDICTION_CACHE_SIZE_BYTES, ClipperConnection
from clipper_admin.container_manager import CLIPPER_TEMP_DIR
from clipper_admin.docker_container_manager import DockerContainerManager
from clipper_admin.exceptions import ClipperException, UnconnectedException
from clipper_admin.kubernetes_container_manager import KubernetesContainerManager
from clipper_admin.local_container_manager import LocalContainerManager
from clipper_admin.version import __registry__, __version__

__all__ = [
    "CLIPPER_TEMP_DIR",
    "DEFAULT_PREDICTION_CACHE_SIZE_BYTES",
    "ClipperConnection",
    "ClipperException",
    "DockerContainerManager",
    "KubernetesContainerManager",
    "LocalContainerManager",
    "UnconnectedException",
    "__registry__",
    "__version__",
    "deployers",
]
