"""The wire form of outputs: what a replica replies for a batch."""

from __future__ import annotations

import pytest

from model_containers.batch import BatchContractError, encode_outputs
from model_containers.model import ItemError


def test_outputs_within_the_reply_limit_are_encoded_each_as_text() -> None:
    response = encode_outputs([1.5, "a", ItemError("bad input")], 3, max_bytes=1000)
    assert [o.WhichOneof("result") for o in response.outputs] == ["value", "value", "error"]
    assert [response.outputs[0].value, response.outputs[1].value] == ["1.5", "a"]


def test_a_reply_over_the_limit_fails_its_batch_with_what_to_change() -> None:
    with pytest.raises(BatchContractError) as raised:
        encode_outputs(["x" * (600 * 1024)] * 2, 2, max_bytes=1024 * 1024)
    assert str(raised.value) == (
        "The model's 2 outputs take 1 MiB, more than the 1 MiB one reply can carry: return "
        "smaller outputs, or deploy the model with a smaller batch_size"
    )


def test_an_output_that_is_not_valid_text_fails_alone() -> None:
    # A lone surrogate, as text decoded with errors="surrogateescape" can hold.
    response = encode_outputs(["caf\u00e9", "bad \udcff", "ok"], 3, max_bytes=1000)
    assert [o.WhichOneof("result") for o in response.outputs] == ["value", "error", "value"]
    assert response.outputs[1].error == (
        "output is not valid UTF-8 text: 'utf-8' codec can't encode character '\\udcff' in "
        "position 4: surrogates not allowed"
    )
    response.SerializeToString()  # what gRPC does with it: no error
