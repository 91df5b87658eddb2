"""The model API every runtime implements: load() once, then predict() once per batch."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any


class ItemError:
    """Returned in place of one output: that input alone failed, the rest of the batch stands."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"ItemError({self.message!r})"


def model_raised(error: BaseException) -> str:
    """What a client is told of an error the model's own code raised."""
    detail = f": {error}" if str(error) else ""
    return f"Model raised {type(error).__name__}{detail}"


class ModelLoadError(Exception):
    """The model directory cannot be turned into a model; the message says why."""


class Model(abc.ABC):
    """A servable model. predict() receives a whole batch and returns one output per input."""

    runtime_name = "model"

    def __init__(self) -> None:
        self.ready = False

    @abc.abstractmethod
    def load(self) -> None:
        """Loads weights or code; called once, before the replica accepts work."""

    @abc.abstractmethod
    def predict(self, inputs: Any) -> Sequence[Any]:
        """Returns one output per input; an ItemError marks a single failed input."""
