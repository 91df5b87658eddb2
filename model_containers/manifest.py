"""The manifest a deployer writes beside a model's files: which runtime loads it, made by what."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

MANIFEST_FILE = "clipper_model.json"


@dataclass(frozen=True)
class ModelManifest:
    runtime: str
    python_version: str = field(
        default_factory=lambda: f"{sys.version_info.major}.{sys.version_info.minor}"
    )
    cloudpickle_version: str = field(default_factory=lambda: str(cloudpickle.__version__))
    options: dict[str, Any] = field(default_factory=dict)

    def write(self, model_dir: Path) -> None:
        (model_dir / MANIFEST_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, model_dir: Path) -> ModelManifest | None:
        path = model_dir / MANIFEST_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(
            runtime=data["runtime"],
            python_version=data.get("python_version", "unknown"),
            cloudpickle_version=data.get("cloudpickle_version", "unknown"),
            options=data.get("options", {}),
        )

    def environment_mismatch(self) -> str | None:
        """Says how this process differs from the one that pickled the model, if it does."""
        here = ModelManifest(runtime=self.runtime)
        problems = []
        if self.python_version != here.python_version:
            problems.append(f"Python {self.python_version} (here {here.python_version})")
        if self.cloudpickle_version != here.cloudpickle_version:
            problems.append(
                f"cloudpickle {self.cloudpickle_version} (here {here.cloudpickle_version})"
            )
        if not problems:
            return None
        return "the model was saved with " + " and ".join(problems)
