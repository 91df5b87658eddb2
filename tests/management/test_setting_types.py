"""The services' settings: a bad value stops a service at start with a message naming it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from model_containers.settings import ReplicaSettings
from query_frontend.settings import FrontendSettings

_REPLICA = {
    "CLIPPER_MODEL_NAME": "m",
    "CLIPPER_MODEL_VERSION": "1",
    "CLIPPER_INPUT_TYPE": "doubles",
}


def _start(module: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLIPPER_")}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("module", "env", "args", "message"),
    [
        (
            "query_frontend",
            {"CLIPPER_QF_PORT": "99999"},
            (),
            "CLIPPER_QF_PORT='99999': Input should be less than or equal to 65535",
        ),
        (
            "query_frontend",
            {"CLIPPER_QF_MAX_BATCH_WAIT_S": "nan", "CLIPPER_QF_MAX_QUEUE_LEN": "0"},
            (),
            "CLIPPER_QF_MAX_BATCH_WAIT_S='nan': Input should be a finite number\n"
            "  CLIPPER_QF_MAX_QUEUE_LEN='0': Input should be greater than or equal to 1",
        ),
        (
            "query_frontend",
            {},
            ("--workers", "0"),
            "CLIPPER_QF_WORKERS=0: Input should be greater than or equal to 1",
        ),
        (
            "management",
            {"CLIPPER_MGMT_LOG_LEVEL": "loud"},
            (),
            "CLIPPER_MGMT_LOG_LEVEL='loud': Value error, must be one of DEBUG, INFO, WARNING",
        ),
        ("model_containers", {}, (), "CLIPPER_MODEL_NAME is not set"),
        (
            "model_containers",
            {**_REPLICA, "CLIPPER_HEARTBEAT_TTL_S": "1"},
            (),
            "CLIPPER_HEARTBEAT_TTL_S (1.0) must be longer than CLIPPER_HEARTBEAT_INTERVAL_S (1.0)",
        ),
    ],
)
def test_a_service_given_a_bad_setting_stops_at_once_naming_it(
    module: str, env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    started = _start(module, env, *args)
    assert started.returncode == 1
    assert started.stderr.startswith("invalid settings:\n  ")
    assert message in started.stderr
    assert "Traceback" not in started.stderr


def test_log_levels_are_named_in_any_case() -> None:
    assert FrontendSettings(log_level="debug").log_level == "DEBUG"
    replica = ReplicaSettings(
        model_name="m", model_version="1", input_type="doubles", log_level="Warning"
    )
    assert replica.log_level == "WARNING"
