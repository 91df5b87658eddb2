"""Models that take one array per batch (TorchScript, ONNX): batch assembly and output formats.

One framework call per batch: the queries are stacked into a single array (or, for image
models, decoded and stacked), and the result is split back into one output per query.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model_containers.image import ImagePreprocessing
from model_containers.manifest import ModelManifest
from model_containers.model import ItemError, Model, ModelLoadError, model_raised

OUTPUT_FORMATS = ("raw", "argmax", "label")
LABELS_FILE = "labels.json"


class TensorModel(Model):
    """Options (from the manifest): input_shape, input_dtype, output, image, top_k."""

    def __init__(self, model_dir: Path, manifest: ModelManifest) -> None:
        super().__init__()
        self.model_dir = model_dir
        options = manifest.options
        self.input_shape: tuple[int, ...] | None = (
            tuple(options["input_shape"]) if options.get("input_shape") else None
        )
        self.input_dtype = np.dtype(options.get("input_dtype", "float32"))
        self.output = str(options.get("output", "raw"))
        if self.output not in OUTPUT_FORMATS:
            raise ModelLoadError(f"output must be one of {OUTPUT_FORMATS}, not {self.output!r}")
        self.image = (
            ImagePreprocessing.from_dict(options["image"]) if options.get("image") else None
        )
        self.labels: list[str] = []
        labels_path = model_dir / LABELS_FILE
        if labels_path.exists():
            self.labels = list(json.loads(labels_path.read_text()))
        if self.output == "label" and not self.labels:
            raise ModelLoadError(f"output 'label' needs {LABELS_FILE} in the model directory")

    def warm_up(self) -> None:
        """One call on zeros when the input shape is known: the first query should not pay for
        the framework's first-run setup (TorchScript's profiling runs, allocator growth)."""
        shape = self.image.input_shape() if self.image is not None else self.input_shape
        if shape is not None:
            dtype = np.float32 if self.image is not None else self.input_dtype
            for _ in range(2):  # TorchScript's profiling executor optimizes on the second run
                self.run(np.zeros((1, *shape), dtype=dtype))

    @abc.abstractmethod
    def run(self, batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """One framework call on the stacked batch; returns an array with one row per query."""

    def predict(self, inputs: Any) -> Sequence[Any]:
        if self.image is not None:
            batch, positions, errors = self.image.decode_batch(inputs)
            groups = [(batch, positions)] if positions else []
        else:
            groups, errors = self._groups(inputs)
        result: list[Any] = [
            ItemError(errors[i]) if i in errors else None for i in range(len(inputs))
        ]
        for batch, positions in groups:
            rows: list[str] | list[ItemError]
            try:
                rows = self._format(self.run(batch))
            except Exception as e:
                if len(groups) == 1:
                    raise  # the whole batch failed: reported as the batch's failure
                # One group's failure is its own: the other groups' inputs were well formed.
                rows = [ItemError(model_raised(e))] * len(positions)
            for i, row in zip(positions, rows, strict=True):
                result[i] = row
        return result

    def _groups(
        self, inputs: Any
    ) -> tuple[list[tuple[np.ndarray[Any, Any], list[int]]], dict[int, str]]:
        """The inputs stacked into arrays of equal-length inputs, with their positions in the
        batch, and why the rest cannot be run.

        Queries from different clients share a batch, so one malformed input must not fail
        the others: an input whose length the model's input shape rules out gets its own
        error, and without a known shape, each length runs as its own call.
        """
        size = int(np.prod(self.input_shape)) if self.input_shape is not None else None
        stacked = getattr(inputs, "dtype", None) != np.dtype(object)
        if stacked and (size is None or inputs.shape[1] == size):
            # Equal lengths, stacked already, and fit: the common case, one call as before.
            return [(self._stack(inputs), list(range(len(inputs))))], {}
        by_length: dict[int, list[int]] = {}
        errors: dict[int, str] = {}
        for i, item in enumerate(inputs):
            if size is not None and len(item) != size:
                errors[i] = (
                    f"input has {len(item)} values; the model takes {size} "
                    f"(input shape {list(self.input_shape or ())})"
                )
            else:
                by_length.setdefault(len(item), []).append(i)
        groups = [
            (self._stack(np.stack([np.asarray(inputs[i]) for i in positions])), positions)
            for positions in by_length.values()
        ]
        return groups, errors

    def _stack(self, inputs: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        batch = np.asarray(inputs, dtype=self.input_dtype)
        if self.input_shape is not None:
            batch = batch.reshape((len(batch), *self.input_shape))
        return batch

    def _format(self, result: np.ndarray[Any, Any]) -> list[str]:
        if self.output == "raw":
            return [json.dumps(row.tolist()) for row in result]
        scores = result.reshape(len(result), -1)
        best = scores.argmax(axis=1)
        if self.output == "argmax":
            return [str(int(i)) for i in best]
        probabilities = _softmax(scores)
        return [
            json.dumps(
                {
                    "label": self.labels[int(i)],
                    "class_index": int(i),
                    "confidence": round(float(probabilities[row, i]), 6),
                }
            )
            for row, i in enumerate(best)
        ]


def _softmax(scores: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    # Scores that already sum to 1 per row (probabilities) are left as they are.
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return scores
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    normalized: np.ndarray[Any, Any] = shifted / shifted.sum(axis=1, keepdims=True)
    return normalized
