"""The hand-made PredictRequest encoding against protobuf's own."""

from __future__ import annotations

import pytest

from clipper_protos import model_pb2
from query_frontend.wire import encode_predict_request, varint

CASES = {
    "empty batch": (2, []),
    "bytes type, the proto default": (0, [b"\x00\x01", b""]),
    "one float input": (2, [b"\x00\x00\x80?"]),
    "an empty input among others": (4, [b"a", b"", b"text"]),
    "one-byte length at its limit": (1, [b"x" * 127]),
    "two-byte length": (1, [b"x" * 128, b"y" * 16383]),
    "three-byte length": (3, [b"z" * 16384]),
    "an MLP batch": (2, [bytes([i]) * 12288 for i in range(25)]),
    "a megabyte image": (0, [b"\xff" * (1 << 20) + b"\x01"]),
    "mixed lengths, repeated": (2, [b"a" * n for n in (1, 300, 1, 70000, 300, 0)]),
}


@pytest.mark.parametrize(("input_type", "inputs"), CASES.values(), ids=CASES.keys())
def test_the_encoding_is_what_protobuf_serializes(input_type: int, inputs: list[bytes]) -> None:
    expected = model_pb2.PredictRequest(
        input_type=model_pb2.InputType.ValueType(input_type), inputs=inputs
    ).SerializeToString()
    encoded = encode_predict_request(input_type, inputs)
    assert encoded == expected
    parsed = model_pb2.PredictRequest.FromString(encoded)
    assert parsed.input_type == input_type
    assert list(parsed.inputs) == inputs


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (2**32, b"\x80\x80\x80\x80\x10"),
    ],
)
def test_varints_follow_the_protobuf_spec(value: int, encoded: bytes) -> None:
    assert varint(value) == encoded


def test_a_negative_varint_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        varint(-1)
