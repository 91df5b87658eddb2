"""The wire form of a batch turned into what predict() receives, and outputs back to the wire."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clipper_protos import model_pb2
from management.input_types import InputType
from model_containers.model import ItemError


class BatchContractError(Exception):
    """The model's answer breaks the predict contract; the whole batch fails with this message."""


def decode_batch(input_type: InputType, items: Sequence[bytes]) -> np.ndarray[Any, Any]:
    """Equal-length numeric inputs stack into a 2-D array (n, d); others form a 1-D object array.

    Strings arrive as Python bytes objects and bytes inputs as int8 arrays, as Clipper's
    containers passed them, so existing predict functions keep working.
    """
    if input_type is InputType.STRINGS:
        strings = np.empty(len(items), dtype=object)
        strings[:] = list(items)
        return strings
    dtype = input_type.numpy_dtype
    if items and len(set(map(len, items))) == 1:
        size = len(items[0])
        if size % dtype.itemsize:
            raise ValueError(
                f"an input of {size} bytes is not a whole number of {dtype.name} values"
            )
        # One buffer for the whole batch: an array per input and np.stack cost about 1 us per
        # input. A bytearray, so that the model may change its inputs in place, as before.
        joined = bytearray().join(items)
        return np.frombuffer(joined, dtype=dtype).reshape(len(items), size // dtype.itemsize)
    arrays = [np.frombuffer(item, dtype=dtype) for item in items]
    ragged = np.empty(len(arrays), dtype=object)
    ragged[:] = arrays
    return ragged


def encode_outputs(outputs: Any, expected: int, max_bytes: int) -> model_pb2.PredictResponse:
    """str() of each output; an ItemError becomes a per-input error. Raises BatchContractError
    if the reply would be over max_bytes."""
    if isinstance(outputs, (str, bytes)) or not hasattr(outputs, "__len__"):
        raise BatchContractError(
            f"Model must return a list with one output per input; it returned "
            f"{type(outputs).__name__}"
        )
    if len(outputs) != expected:
        raise BatchContractError(
            f"Expected model to return {expected} outputs, found {len(outputs)} outputs"
        )
    response = model_pb2.PredictResponse()
    for output in outputs:
        if isinstance(output, ItemError):
            response.outputs.add(error=output.message)
            continue
        value = output if isinstance(output, str) else str(output)
        # isascii() is a flag lookup; only other text can hold a lone surrogate, which gRPC
        # would fail to encode once the reply is sent, taking the whole batch with it.
        problem = None if value.isascii() else _not_utf8(value)
        if problem is None:
            response.outputs.add(value=value)
        else:
            response.outputs.add(error=problem)
    reply_bytes = response.ByteSize()
    if reply_bytes > max_bytes:
        raise BatchContractError(
            f"The model's {expected} outputs take {reply_bytes / 2**20:.0f} MiB, more than the "
            f"{max_bytes / 2**20:.0f} MiB one reply can carry: return smaller outputs, or "
            f"deploy the model with a smaller batch_size"
        )
    return response


def _not_utf8(value: str) -> str | None:
    """Why value cannot be sent as UTF-8 text, or None if it can."""
    try:
        value.encode()
    except UnicodeEncodeError as e:
        return f"output is not valid UTF-8 text: {e}"
    return None
