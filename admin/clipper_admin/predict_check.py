"""Runs a predict function on a query exactly as a replica would, without a cluster."""

from __future__ import annotations

from typing import Any

import cloudpickle

from management.input_types import parse_input_type
from model_containers.batch import decode_batch
from query_frontend.codec import encode_input
from query_frontend.errors import QueryError


def run_predict_locally(query: dict[str, Any], func: Any, input_type: str) -> Any:
    """func's raw return value for the query's inputs, or Clipper's error strings on bad input."""
    kind = parse_input_type(input_type)
    if "input" in query:
        values = [query["input"]]
    elif "input_batch" in query and isinstance(query["input_batch"], list):
        values = list(query["input_batch"])
    else:
        return "Invalid input type or JSON key"
    try:
        items = [encode_input(value, kind, "input") for value in values]
    except QueryError:
        return "Invalid input type"
    # The round trip through cloudpickle catches closures that would not deploy.
    reloaded = cloudpickle.loads(cloudpickle.dumps(func))
    return reloaded(decode_batch(kind, items))
