"""Predict requests from JSON (or a binary body) into wire-ready inputs, and model outputs back
into JSON values."""

from __future__ import annotations

import array
import base64
import binascii
import functools
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import orjson
import simdjson

from management.input_types import InputType
from query_frontend.errors import BAD_REQUEST, JSON_ERROR, QueryError

_SCHEMA_TEXT = (
    'Expected JSON schema: \n  {\n   "input" := [double] | [int] | [string] | [byte] | '
    "[float],\n  }\n"
)
_WIRE_DTYPES = {"i": "<i4", "f": "<f4", "d": "<f8"}
_INT32 = np.iinfo(np.int32)
# The smallest double that rounds to infinity as a 32-bit float: the largest float32 plus half
# its last step (ties round to even, and the largest float32 is odd).
_FLOAT32_OVERFLOW = 2.0**128 - 2.0**103
_INTEGER_TYPES: set[type] = {int}
_NUMBER_TYPES: set[type] = {int, float}
_JSON_TYPE_NAMES = {
    str: "String",
    int: "Number",
    float: "Number",
    bool: "Bool",
    list: "Array",
    dict: "Object",
    type(None): "Null",
}


@dataclass(slots=True)
class PredictRequest:
    inputs: list[bytes]
    version: str | None
    is_batch: bool


OCTET_STREAM = "application/octet-stream"


@dataclass(slots=True, frozen=True)
class BinaryInput:
    """A request whose body is one input as it is, not JSON (Content-Type:
    application/octet-stream), and the version its URL's query names, if any."""

    version: str | None


def binary_input(content_type: str, query: str) -> BinaryInput | None:
    """The BinaryInput of a request with this Content-Type and URL query; None for JSON."""
    if content_type.split(";", 1)[0].strip().lower() != OCTET_STREAM:
        return None
    versions = parse_qs(query, keep_blank_values=True).get("version")
    return BinaryInput(versions[-1] if versions else None)


# A numeric input's wire form is its little-endian numbers: a binary body is taken as it is.
_BINARY_ITEMS = {
    InputType.INTEGERS: (4, "32-bit integers"),
    InputType.FLOATS: (4, "32-bit floats"),
    InputType.DOUBLES: (8, "64-bit floats"),
}


def parse_binary_request(body: bytes, input_type: InputType, binary: BinaryInput) -> PredictRequest:
    """The one input of a binary body: the bytes themselves, UTF-8 text, or little-endian
    numbers, which are already the wire form."""
    where = f"An {OCTET_STREAM} body for a {input_type.canonical_name} app"
    if input_type is InputType.STRINGS:
        try:
            body.decode()
        except UnicodeDecodeError as e:
            raise QueryError(BAD_REQUEST, f"{where} is UTF-8 text, and this is not: {e}") from None
    elif input_type in _BINARY_ITEMS:
        size, name = _BINARY_ITEMS[input_type]
        if len(body) % size:
            raise QueryError(
                BAD_REQUEST,
                f"{where} holds little-endian {name}, {size} bytes each: {len(body)} bytes are "
                "not a whole number of them",
            )
    return PredictRequest([body], binary.version, False)


def json_error(detail: str) -> QueryError:
    return QueryError(JSON_ERROR, f"Error parsing JSON: {detail}. {_SCHEMA_TEXT}")


def parse_predict_request(
    body: bytes, input_type: InputType, max_batch_inputs: int
) -> PredictRequest:
    """The request's inputs in their wire form; an input_batch may hold up to max_batch_inputs."""
    if input_type in _NUMERIC_CODES and len(body) >= _SIMDJSON_MIN_BYTES:
        request = _parse_numeric(body, _NUMERIC_CODES[input_type], max_batch_inputs)
        if request is not None:
            return request
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise json_error(f"JSON parse error: {e}") from None
    if not isinstance(doc, dict):
        raise json_error(f"the request must be a JSON object, found type {_json_type(doc)}")
    version = doc.get("version")
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, (str, int)):
            raise json_error(
                f"Type mismatch! JSON key version expected type String but found type "
                f"{_json_type(version)}"
            )
        version = str(version)
    if "input" in doc:
        return PredictRequest([encode_input(doc["input"], input_type, "input")], version, False)
    if "input_batch" in doc:
        batch = doc["input_batch"]
        if not isinstance(batch, list):
            raise json_error(
                f"Type mismatch! JSON key input_batch expected type Array but found type "
                f"{_json_type(batch)}"
            )
        _check_batch_len(len(batch), max_batch_inputs)
        inputs = [
            encode_input(item, input_type, f"input_batch[{i}]") for i, item in enumerate(batch)
        ]
        return PredictRequest(inputs, version, True)
    raise json_error("JSON object does not have required keys input or input_batch")


# simdjson counts an array's elements up to this, and gives this for any longer array.
_SIMDJSON_COUNT_CAP = 0xFFFFFF


def _check_batch_len(batch_len: int, max_batch_inputs: int, *, at_least: bool = False) -> None:
    # Each input costs the event loop a few microseconds to parse and queue, and every other
    # request waits meanwhile: 3 million took 12 to 21 s, and 256 MB of them would take
    # minutes and more memory than the machine has.
    if batch_len > max_batch_inputs:
        count = f"at least {batch_len}" if at_least else str(batch_len)
        raise QueryError(
            BAD_REQUEST,
            f"input_batch holds {count} inputs, more than the {max_batch_inputs} this "
            "frontend takes in one request: send them in several requests",
        )


_NUMERIC_CODES = {InputType.INTEGERS: "i", InputType.FLOATS: "f", InputType.DOUBLES: "d"}
# Below about this size, orjson and struct are faster than simdjson and numpy's fixed costs
# (2.2 against 5.9 us for 4 doubles; 11.2 against 10.3 us for 128 in a 0.9 KB body).
_SIMDJSON_MIN_BYTES = 1024


class _Unusual(Exception):
    """The request is not a plain one: the full parser handles it and names any problem."""


def _parse_numeric(body: bytes, code: str, max_batch_inputs: int) -> PredictRequest | None:
    """A well-formed request of numeric arrays, parsed straight into machine numbers.

    simdjson reads each array into a buffer of doubles or 64-bit integers without making a
    Python object per number, which halves the cost of parsing a large numeric input. Any
    request it cannot take as is (bad JSON, a boolean or string among the numbers, a value out
    of range) returns None, so errors keep the full parser's wording.
    """
    try:
        # A parser per request: simdjson forbids reusing one while any value it returned is
        # alive, which an exception's traceback may keep so. Creating one costs well under 1 µs.
        doc = simdjson.Parser().parse(body)
        if not isinstance(doc, simdjson.Object):
            return None
        keys = set(doc.keys())
        # A repeated key is left to the full parser, which keeps the last one as orjson does.
        if len(keys) != len(doc):
            return None
        # Asking the document for a key it lacks, by get() or by `in`, throws and catches a
        # C++ exception inside simdjson: 2.5 us of the 78 an MLP request took to parse.
        version = doc["version"] if "version" in keys else None
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, (str, int)):
                return None
            version = str(version)
        # as_buffer flattens nested arrays, so an input holding arrays must not reach it: each
        # input array is one "[", and input_batch one more. A "[" inside a string only sends
        # the request to the full parser.
        if "input" in keys:
            if _count_brackets(body, 2) != 1:
                return None
            return PredictRequest([_pack_numbers(doc["input"], code)], version, False)
        batch = doc["input_batch"] if "input_batch" in keys else None
        if isinstance(batch, simdjson.Array):
            count = len(batch)
            _check_batch_len(count, max_batch_inputs, at_least=count >= _SIMDJSON_COUNT_CAP)
            if _count_brackets(body, count + 2) == count + 1:
                return PredictRequest([_pack_numbers(item, code) for item in batch], version, True)
    except (ValueError, TypeError, _Unusual):
        pass
    return None


def _count_brackets(body: bytes, limit: int) -> int:
    """How many "[" the body holds, counting no further than `limit`.

    find() jumps from one to the next with memchr; count() would look at every byte, which
    for a large input costs more than the rest of this check.
    """
    found, at = 0, body.find(b"[")
    while at != -1 and found < limit:
        found += 1
        at = body.find(b"[", at + 1)
    return found


def _pack_numbers(value: Any, code: str) -> bytes:
    if not isinstance(value, simdjson.Array):
        raise _Unusual()
    if code == "i":
        wide = np.frombuffer(value.as_buffer(of_type="i"), dtype=np.int64)
        if len(wide) and (wide.min() < _INT32.min or wide.max() > _INT32.max):
            raise _Unusual()
        return wide.astype("<i4").tobytes()
    doubles = np.frombuffer(value.as_buffer(of_type="d"), dtype=np.float64)
    if code == "d":
        return doubles.astype("<f8", copy=False).tobytes()
    # A double too large for 32 bits goes to the full parser, which names it. Checking the
    # range first costs 1 us; casting under np.errstate and looking for infinities cost 8.
    if len(doubles) and (doubles.max() >= _FLOAT32_OVERFLOW or doubles.min() <= -_FLOAT32_OVERFLOW):
        raise _Unusual()
    return doubles.astype("<f4").tobytes()


def encode_input(value: Any, input_type: InputType, where: str) -> bytes:
    """One input in its wire form: raw little-endian numbers, UTF-8 text, or decoded bytes."""
    if input_type is InputType.STRINGS:
        if not isinstance(value, str):
            raise _mismatch(where, "String", value)
        return value.encode()
    if input_type is InputType.BYTES:
        if not isinstance(value, str):
            raise _mismatch(where, "String (base64)", value)
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise json_error(f"JSON key {where} is not valid base64: {e}") from None
    if not isinstance(value, list):
        raise _mismatch(where, "Array", value)
    if input_type is InputType.INTEGERS:
        allowed, name, code = _INTEGER_TYPES, "integer", "i"
    else:
        allowed = _NUMBER_TYPES
        name, code = ("float", "f") if input_type is InputType.FLOATS else ("double", "d")
    try:
        # A compiled struct packs at C speed, twice as fast as array.array, straight into the
        # little-endian wire form. It accepts only numbers (booleans too: ints in Python), and
        # refuses a double too large for a 32-bit float rather than making it infinite.
        packed = _packer(code, len(value)).pack(*value)
    except (struct.error, OverflowError):
        raise _precise_error(value, code, allowed, name, where) from None
    if len(value) <= _SHORT_ARRAY:
        # A short array is checked whole: cheaper than numpy's fixed costs to find suspects.
        if not set(map(type, value)) <= allowed:
            raise _element_error(value, allowed, name, where)
        return packed
    view = np.frombuffer(packed, dtype=_WIRE_DTYPES[code])
    # A boolean became 0 or 1, so only those elements need their JSON type checked (all of
    # them when they are many).
    suspects = np.flatnonzero((view == 0) | (view == 1))
    if len(suspects) > len(view) // 8:
        if not set(map(type, value)) <= allowed:
            raise _element_error(value, allowed, name, where)
    elif any(type(value[i]) is bool for i in suspects.tolist()):
        raise _element_error(value, allowed, name, where)
    return packed


# Up to this length an array's element types are checked one by one, without numpy.
_SHORT_ARRAY = 64


@functools.lru_cache(maxsize=64)
def _packer(code: str, length: int) -> struct.Struct:
    return struct.Struct(f"<{length}{code}")


def _precise_error(
    value: list[Any], code: str, allowed: set[type], name: str, where: str
) -> QueryError:
    """The error that names what is wrong with an array that struct refused."""
    try:
        array.array(code, value)
    except TypeError:
        return _element_error(value, allowed, name, where)
    except OverflowError:
        pass
    # Out of range: array.array says so for integers; for 32-bit floats only struct does.
    size = "64-bit" if code == "d" else "32-bit"
    return json_error(f"Array input in {where} does not fit {size} {name}s")


def _element_error(value: list[Any], allowed: set[type], name: str, where: str) -> QueryError:
    wrong = next(v for v in value if type(v) not in allowed)
    return json_error(f"Array input of type {_json_type(wrong)} is not of type {name} in {where}")


def _json_type(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _mismatch(where: str, expected: str, value: Any) -> QueryError:
    # Clipper's wording, with the space it was missing.
    return json_error(
        f"Type mismatch! JSON key {where} expected type {expected} "
        f"but found type {_json_type(value)}"
    )


def output_value(output: str) -> Any:
    """The model's string output, embedded as JSON when it parses as JSON."""
    try:
        return orjson.loads(output)
    except orjson.JSONDecodeError:
        return output
