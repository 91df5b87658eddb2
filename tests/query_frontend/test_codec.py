"""Predict requests parse into the same wire inputs however the numbers are written."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from management.input_types import InputType
from query_frontend.codec import (
    BinaryInput,
    binary_input,
    encode_input,
    parse_binary_request,
    parse_predict_request,
)
from query_frontend.errors import QueryError

NUMERIC = [InputType.INTEGERS, InputType.FLOATS, InputType.DOUBLES]
MAX_BATCH = 10000


def _documents(input_type: InputType) -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    if input_type is InputType.INTEGERS:
        values: list[Any] = [0, -1, 2**31 - 1, -(2**31), *rng.integers(-1000, 1000, 500).tolist()]
    else:
        values = [
            0.0,
            -0.0,
            1,
            0.1,
            1e-50,
            3.4028235e38,
            -3.4028235e38,
            2**63,
            *rng.standard_normal(500).tolist(),
            *rng.random(100).round(4).tolist(),
        ]
    return [
        {"input": values},
        {"input": []},
        {"input": values[:3], "version": "v2"},
        {"input": values[:3], "version": 7},
        {"input": values, "version": "v3"},
        {"input_batch": [values, values[:1], []], "version": None},
        {"input_batch": []},
        {"input": values[:2], "input_batch": [values[:1]]},
    ]


@pytest.mark.parametrize("input_type", NUMERIC, ids=lambda t: t.name)
def test_numeric_inputs_match_the_elementwise_encoding(input_type: InputType) -> None:
    for doc in _documents(input_type):
        request = parse_predict_request(json.dumps(doc).encode(), input_type, MAX_BATCH)
        if "input" in doc:
            expected = [encode_input(doc["input"], input_type, "input")]
        else:
            expected = [encode_input(v, input_type, "input") for v in doc["input_batch"]]
        assert request.inputs == expected, doc
        assert request.is_batch == ("input" not in doc)
        version = doc.get("version")
        assert request.version == (None if version is None else str(version))


@pytest.mark.parametrize("input_type", NUMERIC, ids=lambda t: t.name)
def test_small_and_large_bodies_parse_alike(input_type: InputType) -> None:
    # Bodies under and over the size at which simdjson takes over.
    for length in (1, 100, 200, 400, 1000):
        values = list(range(-length // 2, length - length // 2))
        body = json.dumps({"input_batch": [values, values[:3]]}).encode()
        expected = [encode_input(v, input_type, "input") for v in (values, values[:3])]
        assert parse_predict_request(body, input_type, MAX_BATCH).inputs == expected


def test_numbers_arrive_in_little_endian_wire_form() -> None:
    body = b'{"input_batch": [[1.5, -2], [0.1]]}'
    floats = parse_predict_request(body, InputType.FLOATS, MAX_BATCH).inputs
    assert floats == [struct.pack("<2f", 1.5, -2), struct.pack("<f", 0.1)]
    doubles = parse_predict_request(body, InputType.DOUBLES, MAX_BATCH).inputs
    assert doubles == [struct.pack("<2d", 1.5, -2), struct.pack("<d", 0.1)]
    ints = parse_predict_request(b'{"input": [1, -2, 2147483647]}', InputType.INTEGERS, MAX_BATCH)
    assert ints.inputs == [struct.pack("<3i", 1, -2, 2147483647)]


def test_a_repeated_key_keeps_its_last_value() -> None:
    request = parse_predict_request(
        b'{"input": [1, 2], "input": [3]}', InputType.DOUBLES, MAX_BATCH
    )
    assert request.inputs == [struct.pack("<d", 3)]


@pytest.mark.parametrize(
    ("input_type", "body", "cause"),
    [
        (InputType.DOUBLES, b'{"input": [1.0, null]}', "Array input of type Null"),
        (InputType.FLOATS, b'{"input_batch": [[1.0], [0.5, true]]}', "of type Bool"),
        (InputType.FLOATS, b'{"input": [1e39]}', "does not fit 32-bit floats"),
        (InputType.INTEGERS, b'{"input": [2147483648]}', "does not fit 32-bit integers"),
        (InputType.INTEGERS, b'{"input": [-2147483649]}', "does not fit 32-bit integers"),
        (InputType.INTEGERS, b'{"input": [1E2]}', "of type Number is not of type integer"),
        (InputType.DOUBLES, b'{"input": [[1.0]]}', "Array input of type Array"),
        (InputType.DOUBLES, b'{"input_batch": [[[1.0]], [[2.0]]]}', "of type Array"),
        (InputType.DOUBLES, b'{"input_batch": [[1.0, [2.0]]]}', "of type Array"),
        (InputType.DOUBLES, b'{"input": [1.0], "version": false}', "key version expected"),
        (InputType.DOUBLES, b'{"input": [1.0]} trailing', "JSON parse error"),
        (InputType.DOUBLES, b'{"input": [1.0', "JSON parse error"),
    ],
)
def test_unusual_numeric_input_gets_the_precise_error(
    input_type: InputType, body: bytes, cause: str
) -> None:
    with pytest.raises(QueryError) as raised:
        parse_predict_request(body, input_type, MAX_BATCH)
    assert cause in raised.value.cause


@pytest.mark.parametrize(
    "doc",
    [
        {"input": [[1.0], *[2.5] * 400]},
        {"input": [*[2.5] * 400, [1.0]]},
        {"input_batch": [[2.5] * 400, [[1.0]]]},
        {"input_batch": [[2.5] * 400, [1.0, [2.0]]]},
    ],
    ids=["input-first", "input-last", "batch-nested", "batch-deep"],
)
def test_a_nested_array_in_a_large_body_gets_the_precise_error(doc: dict[str, Any]) -> None:
    # Over 1 KB, simdjson parses numeric bodies, and it would flatten nested arrays.
    body = json.dumps(doc).encode()
    assert len(body) > 1024
    with pytest.raises(QueryError) as raised:
        parse_predict_request(body, InputType.DOUBLES, MAX_BATCH)
    assert "of type Array" in raised.value.cause


# The largest float32 plus half its last step: doubles from here on round to infinity.
_FLOAT32_OVERFLOW = 2.0**128 - 2.0**103


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["positive", "negative"])
def test_a_large_body_takes_floats_up_to_the_float32_limit_and_refuses_beyond(
    sign: float,
) -> None:
    largest = sign * float(np.nextafter(_FLOAT32_OVERFLOW, 0.0))
    body = json.dumps({"input": [*[2.5] * 400, largest]}).encode()
    assert len(body) > 1024
    (packed,) = parse_predict_request(body, InputType.FLOATS, MAX_BATCH).inputs
    assert packed == struct.pack("<401f", *[2.5] * 400, largest)
    assert struct.unpack_from("<f", packed, 400 * 4)[0] == sign * float(np.finfo(np.float32).max)

    beyond = json.dumps({"input": [*[2.5] * 400, sign * _FLOAT32_OVERFLOW]}).encode()
    with pytest.raises(QueryError) as raised:
        parse_predict_request(beyond, InputType.FLOATS, MAX_BATCH)
    assert "does not fit 32-bit floats" in raised.value.cause


@pytest.mark.parametrize("input_type", [*NUMERIC, InputType.STRINGS], ids=lambda t: t.name)
def test_an_input_batch_holds_at_most_the_maximum(input_type: InputType) -> None:
    item: Any = "a" if input_type is InputType.STRINGS else [1]
    # Small bodies go to orjson and large numeric ones to simdjson: both count the same.
    for limit in (3, 500):
        full = json.dumps({"input_batch": [item] * limit}).encode()
        assert len(parse_predict_request(full, input_type, limit).inputs) == limit
        over = json.dumps({"input_batch": [item] * (limit + 1)}).encode()
        with pytest.raises(QueryError) as raised:
            parse_predict_request(over, input_type, limit)
        assert raised.value.status == 400
        assert raised.value.cause == (
            f"input_batch holds {limit + 1} inputs, more than the {limit} this frontend takes "
            "in one request: send them in several requests"
        )


def test_an_input_batch_longer_than_simdjson_counts_is_refused_as_at_least_that() -> None:
    # simdjson stops counting an array's elements at 2**24 - 1.
    body = b'{"input_batch": [' + b"[1]," * 2**24 + b"[1]]}"
    with pytest.raises(QueryError) as raised:
        parse_predict_request(body, InputType.DOUBLES, MAX_BATCH)
    assert raised.value.cause.startswith(f"input_batch holds at least {2**24 - 1} inputs")


@pytest.mark.parametrize(
    ("content_type", "query", "binary"),
    [
        ("application/octet-stream", "", BinaryInput(None)),
        (" Application/Octet-Stream ; x=1", "version=2", BinaryInput("2")),
        ("application/octet-stream", "a=1&version=v1&version=v2", BinaryInput("v2")),
        ("application/octet-stream", "version=", BinaryInput("")),
        ("application/octet-stream", "version=%C3%A9", BinaryInput("é")),
        ("application/json", "version=2", None),
        ("", "", None),
        ("application/octet-streamy", "", None),
    ],
)
def test_a_binary_body_is_told_by_its_content_type(
    content_type: str, query: str, binary: BinaryInput | None
) -> None:
    assert binary_input(content_type, query) == binary


@pytest.mark.parametrize(
    ("input_type", "dtype"),
    [(InputType.DOUBLES, "<f8"), (InputType.FLOATS, "<f4"), (InputType.INTEGERS, "<i4")],
)
def test_a_binary_body_is_the_same_input_as_its_json(input_type: InputType, dtype: str) -> None:
    # Short and long arrays: the JSON parsers differ by length.
    for values in ([7, -2, 3], list(range(-500, 500))):
        body = np.array(values, dtype).tobytes()
        binary = parse_binary_request(body, input_type, BinaryInput("3"))
        as_json = parse_predict_request(json.dumps({"input": values}).encode(), input_type, 10)
        assert binary.inputs == as_json.inputs
        assert (binary.version, binary.is_batch) == ("3", False)
