"""The kinds of value the services' settings hold, checked as they are read, and the message
that names a bad one."""

from __future__ import annotations

import logging
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationError

Port = Annotated[int, Field(ge=1, le=65535)]
# 0 lets the system pick a free port.
ListenPort = Annotated[int, Field(ge=0, le=65535)]
Count = Annotated[int, Field(ge=1)]
Bytes = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _log_level(name: str) -> str:
    level = name.upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


LogLevel = Annotated[str, AfterValidator(_log_level)]


def settings_error(error: ValidationError, env_prefix: str) -> str:
    """One line per bad setting, named as the environment variable that sets it."""
    lines = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"])
        if not field:
            lines.append(problem["msg"])
        elif problem["type"] == "missing":
            lines.append(f"{env_prefix}{field.upper()} is not set")
        else:
            lines.append(f"{env_prefix}{field.upper()}={problem['input']!r}: {problem['msg']}")
    return "invalid settings:\n  " + "\n  ".join(lines)
