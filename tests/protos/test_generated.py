"""The committed gRPC code is what scripts/generate-protos makes from protos/model.proto."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current() -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "generate-protos"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        # The interpreter running the tests has grpcio-tools; whatever `python` is on PATH
        # may not.
        env={**os.environ, "PYTHON_BIN": sys.executable},
    )
    assert result.returncode == 0, result.stderr
    assert "generated gRPC code is current" in result.stdout
