"""Preprocessing between display pixels (RGB, 0-255) and what a model takes, in both directions.

The modes match `keras.applications.imagenet_utils.preprocess_input`: `caffe` (RGB->BGR, minus the ImageNet
mean), `tf` (to [-1, 1]), `torch` (to [0, 1], minus mean, divided by std), plus `scale` (pixels/255, what most
hand-trained models expect) and `none` (raw 0-255, for models that rescale inside the network). Each mode also
knows its valid input range, so an optimised input (a filter pattern) stays a real image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

IMAGENET_MEAN_RGB = np.array([123.68, 116.779, 103.939], dtype=np.float32)
TORCH_MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32)
TORCH_STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class Preprocessor:
    """An affine per-channel map `model_input = (pixels[..., order] - offset) * scale`, and its inverse."""

    mode: str
    channels: int = 3
    reason: str = ""  # why this mode: "chosen with --preprocess", or what `auto` saw

    def formula(self) -> str:
        """The map from pixels (0-255) to model inputs, in words, with the range it gives."""
        low, high = self.valid_range()
        span = f"[{float(low.min()):.4g}, {float(high.max()):.4g}]"
        if self.mode == "caffe":
            order = "RGB to BGR, then " if self.channels == 3 else ""
            return f"{order}x = pixel - ImageNet mean (B 103.9, G 116.8, R 123.7); inputs in {span}"
        if self.mode == "tf":
            return f"x = pixel / 127.5 - 1; inputs in {span}"
        if self.mode == "torch":
            return f"x = (pixel / 255 - ImageNet mean) / ImageNet std, per channel; inputs in {span}"
        if self.mode == "scale":
            return f"x = pixel / 255; inputs in {span}"
        return f"x = pixel (raw 0-255, the model rescales itself); inputs in {span}"

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

    def input_span(self) -> tuple[float, float]:
        """(lowest, highest) model input value over every channel."""
        low, high = self.valid_range()
        return float(low.min()), float(high.max())

    def valid_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) of the model input that corresponds to pixels 0 and 255."""
        low = self.apply(np.zeros((1, 1, self.channels), np.float32))[0, 0]
        high = self.apply(np.full((1, 1, self.channels), 255, np.float32))[0, 0]
        return np.minimum(low, high), np.maximum(low, high)


def expected_input_span(model: Any) -> tuple[tuple[float, float], str] | None:
    """The input range a model's own first layers imply, and which layer says so; None without such a hint.

    A leading Rescaling(1/255) or Rescaling(1/127.5, -1) was written for raw 0-255 pixels; a leading
    Normalization layer's mean shows the range its statistics were adapted on.
    """
    import keras

    from reportgen.graph import walk_layers

    for node in walk_layers(model)[:3]:
        layer = node.layer
        if isinstance(layer, keras.layers.Rescaling):
            scale = float(np.mean(np.asarray(layer.scale, np.float64)))
            if 0 < scale < 0.05:  # 1/255, 1/127.5: made for 0-255 pixels
                return (0.0, 255.0), f"{node.path} (Rescaling by {scale:.4g}) expects raw pixels 0-255"
            return None
        if isinstance(layer, keras.layers.Normalization):
            mean = getattr(layer, "mean", None)
            if mean is None:
                return None
            average = float(np.mean(np.asarray(mean, np.float64)))
            if average > 2.0:
                return (0.0, 255.0), f"{node.path} (Normalization, mean {average:.3g}) was adapted on raw pixels"
            if 0.0 <= average <= 1.0:
                return (0.0, 1.0), f"{node.path} (Normalization, mean {average:.3g}) was adapted on pixels / 255"
            return None
        if not isinstance(layer, (keras.layers.InputLayer, keras.layers.Resizing)):
            return None
    return None


def range_mismatch(preprocessor: Preprocessor, model: Any) -> str | None:
    """A warning when the chosen preprocessing gives inputs far from the range the model's first layers imply."""
    hint = expected_input_span(model)
    if hint is None:
        return None
    (low, high), why = hint
    got_low, got_high = preprocessor.input_span()
    expected_span, got_span = high - low, got_high - got_low
    if 0.5 * expected_span <= got_span <= 2.0 * expected_span and abs(got_low - low) <= 0.25 * expected_span:
        return None
    return (f"preprocessing: {why}, but --preprocess {preprocessor.mode} gives inputs in [{got_low:.4g}, "
            f"{got_high:.4g}]; the model may see images far too dark or too bright (set --preprocess)")
