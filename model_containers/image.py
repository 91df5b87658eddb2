"""Image inputs: decode PNG/JPEG/WebP bytes, resize, crop and normalize into one batch array."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# EfficientNet-Lite's normalization: (pixel - 127) / 128.
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImagePreprocessing:
    """How a model wants its images: resize the shorter side, center-crop, scale, normalize.

    The result is float32, NCHW (PyTorch's layout) or NHWC.
    """

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    layout: str = "NCHW"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImagePreprocessing:
        return cls(
            crop_size=int(data["crop_size"]),
            resize_size=int(data["resize_size"]),
            mean=(float(data["mean"][0]), float(data["mean"][1]), float(data["mean"][2])),
            std=(float(data["std"][0]), float(data["std"][1]), float(data["std"][2])),
            layout=str(data["layout"]),
            extra=dict(data.get("extra", {})),
        )

    def decode(self, data: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
        """One image as a float32 array; raises ValueError naming what is wrong with it."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as opened:
                image = opened.convert("RGB")
        except UnidentifiedImageError:
            raise ValueError(
                f"cannot decode image ({len(data)} bytes): not a PNG, JPEG, WebP or other "
                "image format"
            ) from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"cannot decode image ({len(data)} bytes): {e}") from None
        width, height = image.size
        scale = self.resize_size / min(width, height)
        resized = image.resize(
            (max(self.crop_size, round(width * scale)), max(self.crop_size, round(height * scale))),
            Image.Resampling.BILINEAR,
        )
        left = (resized.width - self.crop_size) // 2
        top = (resized.height - self.crop_size) // 2
        cropped = resized.crop((left, top, left + self.crop_size, top + self.crop_size))
        scaled = np.asarray(cropped, dtype=np.float32) / np.float32(255.0)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        pixels = (scaled - mean) / std
        if self.layout == "NCHW":
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels, dtype=np.float32)

    def input_shape(self) -> tuple[int, int, int]:
        size = self.crop_size
        return (3, size, size) if self.layout == "NCHW" else (size, size, 3)

    def decode_batch(
        self, inputs: Any
    ) -> tuple[np.ndarray[Any, np.dtype[np.float32]], list[int], dict[int, str]]:
        """The decodable images stacked, their positions in the batch, and why the rest failed."""
        arrays, positions, errors = [], [], {}
        for i, item in enumerate(inputs):
            try:
                arrays.append(self.decode(bytes(np.asarray(item, dtype=np.int8).tobytes())))
                positions.append(i)
            except ValueError as e:
                errors[i] = str(e)
        stacked = np.stack(arrays) if arrays else np.zeros((0, *self.input_shape()), np.float32)
        return stacked, positions, errors
