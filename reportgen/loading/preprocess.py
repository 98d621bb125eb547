"""Preprocessing between display pixels (RGB, 0-255) and what a model takes, in both directions.

The modes match `keras.applications.imagenet_utils.preprocess_input`: `caffe` (RGB->BGR, minus the ImageNet
mean), `tf` (to [-1, 1]), `torch` (to [0, 1], minus mean, divided by std), plus `scale` (pixels/255, what most
hand-trained models expect) and `none` (raw 0-255, for models that rescale inside the network). Each mode also
knows its valid input range, so an optimised input (a filter pattern) stays a real image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGENET_MEAN_RGB = np.array([123.68, 116.779, 103.939], dtype=np.float32)
TORCH_MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32)
TORCH_STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class Preprocessor:
    """An affine per-channel map `model_input = (pixels[..., order] - offset) * scale`, and its inverse."""

    mode: str
    channels: int = 3

    def _affine(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """(offset, scale, swap_rgb_to_bgr) per channel, in the channel order of the *input* pixels."""
        c = self.channels
        if self.mode == "caffe":
            mean = IMAGENET_MEAN_RGB if c == 3 else np.full(c, IMAGENET_MEAN_RGB.mean(), np.float32)
            return mean, np.ones(c, np.float32), c == 3
        if self.mode == "tf":
            return np.full(c, 127.5, np.float32), np.full(c, 1 / 127.5, np.float32), False
        if self.mode == "torch":
            mean = TORCH_MEAN_RGB if c == 3 else np.full(c, TORCH_MEAN_RGB.mean(), np.float32)
            std = TORCH_STD_RGB if c == 3 else np.full(c, TORCH_STD_RGB.mean(), np.float32)
            return mean * 255, 1 / (255 * std), False
        if self.mode == "scale":
            return np.zeros(c, np.float32), np.full(c, 1 / 255, np.float32), False
        if self.mode == "none":
            return np.zeros(c, np.float32), np.ones(c, np.float32), False
        raise ValueError(f"unknown preprocessing mode {self.mode!r}")

    @property
    def channel_order(self) -> str:
        """The colour order of the model input: `BGR` for caffe on colour images, else `RGB` (or `gray`)."""
        if self.channels == 1:
            return "gray"
        return "BGR" if self._affine()[2] else "RGB"

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Display pixels (..., H, W, C) in 0-255, RGB order -> model input (float32)."""
        offset, scale, swap = self._affine()
        x = (pixels.astype(np.float32) - offset) * scale
        return x[..., ::-1].copy() if swap else x

    def invert(self, model_input: np.ndarray) -> np.ndarray:
        """Model input -> display pixels in 0-255 RGB (float32, not clipped)."""
        offset, scale, swap = self._affine()
        x = np.asarray(model_input, dtype=np.float32)
        if swap:
            x = x[..., ::-1]
        return x / scale + offset

    def valid_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) of the model input that corresponds to pixels 0 and 255."""
        low = self.apply(np.zeros((1, 1, self.channels), np.float32))[0, 0]
        high = self.apply(np.full((1, 1, self.channels), 255, np.float32))[0, 0]
        return np.minimum(low, high), np.maximum(low, high)
