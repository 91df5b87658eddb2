"""Image preprocessing: formats, geometry, normalization and errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model_containers.image import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocessing


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP"])
def test_lossless_formats_decode_to_the_same_normalized_pixels(fmt: str) -> None:
    pixels = np.full((100, 60, 3), (255, 128, 0), dtype=np.uint8)
    decoded = ImagePreprocessing(crop_size=32, resize_size=40).decode(_encode(pixels, fmt))
    assert decoded.shape == (3, 32, 32) and decoded.dtype == np.float32
    expected = (np.array([255, 128, 0]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(decoded[:, 16, 16], expected, atol=1e-5)


def test_shorter_side_is_resized_then_center_cropped_nhwc() -> None:
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, 30:50] = 255  # a white band in the middle survives the center crop
    preprocessing = ImagePreprocessing(
        crop_size=20, resize_size=20, mean=(0, 0, 0), std=(1, 1, 1), layout="NHWC"
    )
    decoded = preprocessing.decode(_encode(pixels, "PNG"))
    assert decoded.shape == (20, 20, 3)
    assert decoded[10, 10, 0] == pytest.approx(1.0, abs=0.02)
    assert decoded[10, 0, 0] == pytest.approx(0.0, abs=0.02)


def test_grayscale_and_alpha_become_rgb() -> None:
    gray = np.full((30, 30), 200, dtype=np.uint8)
    rgba = np.zeros((30, 30, 4), dtype=np.uint8)
    preprocessing = ImagePreprocessing(crop_size=16, resize_size=16)
    assert preprocessing.decode(_encode(gray, "PNG")).shape == (3, 16, 16)
    assert preprocessing.decode(_encode(rgba, "PNG")).shape == (3, 16, 16)


def test_batches_keep_positions_of_good_images_and_reasons_for_bad_ones() -> None:
    good = np.frombuffer(_encode(np.zeros((20, 20, 3), np.uint8), "PNG"), dtype=np.int8)
    truncated = good[: len(good) // 2]
    garbage = np.frombuffer(b"garbage", dtype=np.int8)
    batch = np.empty(4, dtype=object)
    batch[:] = [good, garbage, good, truncated]
    stacked, positions, errors = ImagePreprocessing(crop_size=8, resize_size=8).decode_batch(batch)
    assert stacked.shape == (2, 3, 8, 8)
    assert positions == [0, 2]
    assert set(errors) == {1, 3}
    assert "not a PNG, JPEG, WebP or other image format" in errors[1]
    assert errors[3].startswith("cannot decode image")


def test_round_trip_through_the_manifest() -> None:
    preprocessing = ImagePreprocessing(crop_size=10, resize_size=12, layout="NHWC")
    assert ImagePreprocessing.from_dict(preprocessing.to_dict()) == preprocessing
