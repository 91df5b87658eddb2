"""The five input types: canonical names, the aliases Clipper accepted, and their wire codes."""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class InputType(IntEnum):
    """Values match clipper.v1.InputType in protos/model.proto."""

    BYTES = 0
    INTEGERS = 1
    FLOATS = 2
    DOUBLES = 3
    STRINGS = 4

    @property
    def canonical_name(self) -> str:
        return self.name.lower()

    @property
    def numpy_dtype(self) -> np.dtype[np.generic]:
        """The element type a model receives; strings and bytes arrive as Python bytes objects."""
        return np.dtype(_DTYPES[self])


_DTYPES = {
    InputType.BYTES: np.int8,
    InputType.INTEGERS: np.int32,
    InputType.FLOATS: np.float32,
    InputType.DOUBLES: np.float64,
    InputType.STRINGS: np.object_,
}

_ALIASES = {
    InputType.BYTES: ("bytes", "byte", "b"),
    InputType.INTEGERS: ("integers", "ints", "integer", "int", "i"),
    InputType.FLOATS: ("floats", "float", "f"),
    InputType.DOUBLES: ("doubles", "double", "d"),
    InputType.STRINGS: ("strings", "string", "str", "strs", "s"),
}

_BY_ALIAS = {alias: kind for kind, aliases in _ALIASES.items() for alias in aliases}


def parse_input_type(name: str) -> InputType:
    """Maps a name or alias to its type; raises ValueError naming the accepted names."""
    try:
        return _BY_ALIAS[name.strip().lower()]
    except KeyError:
        accepted = ", ".join(sorted(_BY_ALIAS))
        raise ValueError(f"Invalid input type '{name}'. Accepted input types: {accepted}") from None
