"""The PredictRequest wire form, encoded by hand for the batch stream to the replicas.

protobuf's upb serializer copies large bytes fields slowly: a batch of 25 MLP inputs (12 KB
each) took 240 µs to serialize, against 13 µs for this encoder, which joins the inputs once
behind their field headers. The replica parses the result with the generated code as usual.
"""

from __future__ import annotations

import functools

from clipper_protos import model_pb2

# A tag is field << 3 | wire type: input_type (1) is a varint, inputs (2) length-delimited.
_INPUT_TYPE_TAG = b"\x08"
_INPUTS_TAG = b"\x12"

_SERVICE = model_pb2.DESCRIPTOR.services_by_name["ModelService"]
PREDICT_STREAM_PATH = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['PredictStream'].name}"


def varint(value: int) -> bytes:
    """An unsigned protobuf varint: 7 bits per byte, low bits first, high bit set on all but the
    last."""
    if value < 0:
        raise ValueError(f"a varint holds no negative number, got {value}")
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.lru_cache(maxsize=256)
def _input_header(length: int) -> bytes:
    # Inputs of one model mostly share a length, so the header is made once per length.
    return _INPUTS_TAG + varint(length)


def encode_predict_request(input_type: int, inputs: list[bytes]) -> bytes:
    """The bytes that PredictRequest(input_type=..., inputs=...).SerializeToString() gives."""
    parts = [_INPUT_TYPE_TAG + varint(input_type)] if input_type else []
    for item in inputs:
        parts.append(_input_header(len(item)))
        parts.append(item)
    return b"".join(parts)
