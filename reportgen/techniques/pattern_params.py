"""How a filter pattern is parameterised, transformed and updated during the search, in TensorFlow ops.

Every method works on display pixels `unit` in [0, 1] (RGB order, what pixels/255 would be); `PixelMap` turns
them into the model's input, so a pattern is always a real image whatever the preprocessing. The methods:

- `ProjectedAscent` ("projected", the default): Adam on the pixels, each step projected onto the valid images
  with at most 10% of their values within 1% of the range's ends. Chosen by `benchmarks/pattern_methods.py` on
  six models: in 40 steps it reaches 1.11x the tutorials' mean activation on the small trained CNNs (every layer
  above 1x; `benchmarks/pattern_bound.py` puts the best valid image at 1.15-1.17x there), 1.22x on the example
  CNN, 1.5-1.6x on VGG16 and ResNet50 with random weights.
- `LogitAscent` ("logit", the previous default): pixels through a sigmoid, Adam on the logits with a cosine
  learning-rate decay and a penalty on saturation: no pixel near the ends, but 0.90-0.96x the tutorial's
  activation on the trained models.
- `PixelAscent` ("pixel"): the tutorials' method (Chollet, *Deep Learning with Python* 5.4): the pixels are the
  parameters, each step adds the gradient divided by its RMS; here batched, compiled and clipped to [0, 1].
- `FourierAscent` ("fourier"): Lucid's recipe (Olah et al., "Feature Visualization", Distill 2017): the image is
  the inverse FFT of a spectrum scaled by 1/frequency (so every frequency learns at a similar rate and
  high-frequency noise is not favoured), colours are decorrelated with the ImageNet colour-correlation square
  root (none for grey or other channel counts), a sigmoid keeps pixels inside [0, 1], Adam updates the spectrum
  and every ascent step sees the image through a small random jitter, scale and rotation (seeded, stateless), so
  the pattern cannot rely on pixel-exact noise.
- `MacoAscent` ("maco"): the phase of the spectrum only, at a fixed natural 1/f magnitude (Fel et al., 2023).

The benchmarks' yardstick, the tutorials' loop itself (`TutorialAscent`), lives in `benchmarks/tutorial.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen import registry

# Square root of the ImageNet RGB colour-correlation matrix, from Lucid (lucid/optvis/param/color.py).
COLOR_CORRELATION_SVD_SQRT = np.array(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)


@dataclass(frozen=True)
class PixelMap:
    """The affine map from display pixels in [0, 1] (..., C) to model input: `offset + unit @ matrix`.

    Read off the preprocessor itself, so caffe's channel swap and torch's per-channel scale come along.
    """

    offset: np.ndarray  # (C,) model input of a black image
    matrix: np.ndarray  # (C, C): row k is what pixel channel k at full intensity adds to each input channel

    @classmethod
    def from_preprocessor(cls, preprocessor: Any) -> PixelMap:
        channels = preprocessor.channels
        offset = preprocessor.apply(np.zeros((1, 1, channels), np.float32))[0, 0]
        basis = np.eye(channels, dtype=np.float32)[:, None, :] * 255.0  # (C, 1, C): one channel lit per row
        matrix = preprocessor.apply(basis)[:, 0, :] - offset
        return cls(offset.astype(np.float32), matrix.astype(np.float32))

    def to_model(self, unit: Any) -> Any:
        import tensorflow as tf

        return tf.tensordot(unit, tf.constant(self.matrix), axes=1) + tf.constant(self.offset)


@dataclass(frozen=True)
class Jitter:
    """Per-image random rotation, scale and translation applied to the image the model sees each step."""

    degrees: float = 3.0
    scale: float = 0.08  # scale drawn from [1 - scale, 1 + scale]
    shift: float = 0.04  # translation up to this share of the image size

    def __call__(self, unit: Any, seed: Any, amount: Any) -> Any:
        """`unit` (B, H, W, C) in [0, 1]; `seed` an int64 (2,) tensor for the stateless random draws; `amount` (B,)
        scales each image's transform (0: the image as it is)."""
        import tensorflow as tf

        height, width = int(unit.shape[1]), int(unit.shape[2])
        draws = tf.random.stateless_uniform(tf.stack([tf.shape(unit)[0], 4]), seed, -1.0, 1.0) * amount[:, None]
        angle = draws[:, 0] * math.radians(self.degrees)
        scale = 1.0 + draws[:, 1] * self.scale
        tx, ty = draws[:, 2] * self.shift * width, draws[:, 3] * self.shift * height
        # The op maps each output pixel (x, y) to the input point it samples: rotate and scale about the centre.
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
        zeros = tf.zeros_like(cos)
        transforms = tf.stack(
            [cos, -sin, cx - cos * cx + sin * cy + tx, sin, cos, cy - sin * cx - cos * cy + ty, zeros, zeros],
            axis=1,
        )
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=unit, transforms=transforms, output_shape=tf.constant([height, width], tf.int32),
            fill_value=tf.constant(0.0), interpolation="NEAREST", fill_mode="REFLECT",
        )


class PixelParameters:
    """The parameters are the pixels themselves (0..1 of the valid range), starting from the tutorials' grey plus
    20% noise; a method adds its `update` (and may change the start or the last step)."""

    def param_shape(self, height: int, width: int, channels: int) -> tuple[int, ...]:
        return (height, width, channels)

    def init(self, rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
        return (0.4 + 0.2 * rng.random((height, width, channels))).astype(np.float32)

    def image(self, params: Any, width: int) -> Any:
        return params

    def finish(self, params: Any) -> Any:
        return params


@dataclass(frozen=True)
class PixelAscent(PixelParameters):
    """Pixels as parameters, RMS-normalised gradient steps (the tutorials), clipped to the valid range."""

    learning_rate: float = 4.0 / 255  # the tutorial steps one grey level (1/255); 4 reaches ~2.5x higher in 40
    name: str = "pixel"
    jitter: Jitter | None = None

    def init(self, rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
        # DLwP 5.4 starts from grey with a little noise: 128 + 20 * U(0, 1) grey levels.
        return ((128.0 + 20.0 * rng.random((height, width, channels))) / 255.0).astype(np.float32)

    def update(self, params: Any, grad: Any, state: tuple[Any, Any], step: Any, total: Any,
               signs: Any) -> tuple[Any, tuple[Any, Any]]:
        import tensorflow as tf

        rms = tf.sqrt(tf.reduce_mean(tf.square(grad), axis=[1, 2, 3], keepdims=True))
        return tf.clip_by_value(params + self.learning_rate * grad / (rms + 1e-5), 0.0, 1.0), state


@dataclass(frozen=True)
class FourierAscent:
    """Lucid-style: 1/f-scaled Fourier spectrum, decorrelated colour, sigmoid into range, Adam, jitter."""

    learning_rate: float = 0.3  # Lucid uses 0.05 for 512 steps; 0.3 suits 40 (see benchmarks/)
    final_rate: float | None = None  # cosine decay to this at the last step (None: constant)
    decay_power: float = 1.0
    init_std: float = 0.01
    name: str = "fourier"
    jitter: Jitter | None = Jitter()

    def param_shape(self, height: int, width: int, channels: int) -> tuple[int, ...]:
        return (2, channels, height, width // 2 + 1)  # real and imaginary parts of an rfft2d spectrum

    def init(self, rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
        shape = self.param_shape(height, width, channels)
        return (rng.standard_normal(shape) * self.init_std).astype(np.float32)

    def _spectrum_scale(self, height: int, width: int) -> np.ndarray:
        fy = np.fft.fftfreq(height)[:, None]
        fx = np.fft.rfftfreq(width)[None, :]
        freqs = np.sqrt(fx * fx + fy * fy)
        scale = 1.0 / np.maximum(freqs, 1.0 / max(height, width)) ** self.decay_power
        return (scale * np.sqrt(height * width)).astype(np.float32)

    def image(self, params: Any, width: int) -> Any:
        """(B, 2, C, H, W // 2 + 1) spectra -> (B, H, W, C) images in [0, 1] (`width`: an rfft forgets odd ones)."""
        import tensorflow as tf

        channels, height = int(params.shape[2]), int(params.shape[3])
        scale = tf.constant(self._spectrum_scale(height, width))
        spectrum = tf.complex(params[:, 0] * scale, params[:, 1] * scale)
        # Lucid divides by 4 so the sigmoid starts in its linear part.
        image = tf.transpose(tf.signal.irfft2d(spectrum, fft_length=[height, width]), (0, 2, 3, 1)) / 4.0
        return tf.sigmoid(_decorrelate(image, channels))

    def finish(self, params: Any) -> Any:
        return params

    def update(self, params: Any, grad: Any, state: tuple[Any, Any], step: Any, total: Any,
               signs: Any) -> tuple[Any, tuple[Any, Any]]:
        """One Adam step of ascent (beta1 0.9, beta2 0.999), written out so the state is plain tensors."""
        return _adam(params, grad, state, step, _schedule(self.learning_rate, self.final_rate, step, total))


def _schedule(start: float, end: float | None, step: Any, total: Any) -> Any:
    """Cosine decay from `start` at step 1 to `end` at the last step (`end` None: constant)."""
    import tensorflow as tf

    if end is None:
        return start
    progress = (step - 1.0) / tf.maximum(total - 1.0, 1.0)
    return end + (start - end) * 0.5 * (1.0 + tf.cos(math.pi * progress))


def _adam(params: Any, grad: Any, state: tuple[Any, Any], step: Any, rate: Any) -> tuple[Any, tuple[Any, Any]]:
    import tensorflow as tf

    m, v = state
    m = 0.9 * m + 0.1 * grad
    v = 0.999 * v + 0.001 * tf.square(grad)
    m_hat = m / (1.0 - tf.pow(0.9, step))
    v_hat = v / (1.0 - tf.pow(0.999, step))
    return params + rate * m_hat / (tf.sqrt(v_hat) + 1e-8), (m, v)


def _decorrelate(image: Any, channels: int) -> Any:
    """(B, H, W, C) independent logits -> correlated colour logits: ImageNet's colour correlation for RGB, none
    for grey (one channel) or other channel counts, each channel's variance kept at most 1."""
    import tensorflow as tf

    if channels != 3:
        return image
    norm = np.max(np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0))
    return tf.tensordot(image, tf.constant((COLOR_CORRELATION_SVD_SQRT / norm).T), axes=1)


def natural_magnitude(height: int, width: int, decay_power: float = 1.0) -> np.ndarray:
    """(H, W // 2 + 1) amplitude spectrum of natural images, 1 / f^decay (Field 1987), the DC term left out."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    freqs = np.sqrt(fx * fx + fy * fy)
    magnitude = 1.0 / np.maximum(freqs, 1.0 / max(height, width)) ** decay_power
    magnitude[0, 0] = 0.0
    return magnitude.astype(np.float32)


@dataclass(frozen=True)
class MacoAscent:
    """MACO (Fel et al., "Unlocking Feature Visualization for Deeper Networks with MAgnitude Constrained
    Optimization", NeurIPS 2023): only the phase of the image's spectrum is optimised; its magnitude stays fixed
    at natural images' 1/f, so the pattern keeps a natural image's contrast at every frequency. The image is
    standardised, its colours correlated like ImageNet's (RGB only) and mapped by a sigmoid at a fixed gain,
    which keeps almost every pixel off the ends of the range. Adam on the phase, every ascent step jittered."""

    learning_rate: float = 1.0
    final_rate: float | None = 0.1
    gain: float = 1.6  # sigmoid(1.6 z) of a unit-variance image: 0.2% of pixels past 0.99 or below 0.01
    name: str = "maco"
    jitter: Jitter | None = Jitter()

    def param_shape(self, height: int, width: int, channels: int) -> tuple[int, ...]:
        return (channels, height, width // 2 + 1)

    def init(self, rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
        shape = self.param_shape(height, width, channels)
        return rng.uniform(-np.pi, np.pi, shape).astype(np.float32)

    def image(self, params: Any, width: int) -> Any:
        import tensorflow as tf

        channels, height = int(params.shape[1]), int(params.shape[2])
        magnitude = tf.constant(natural_magnitude(height, width))
        spectrum = tf.complex(magnitude * tf.cos(params), magnitude * tf.sin(params))
        image = tf.transpose(tf.signal.irfft2d(spectrum, fft_length=[height, width]), (0, 2, 3, 1))
        mean, variance = tf.nn.moments(image, axes=[1, 2, 3], keepdims=True)
        image = (image - mean) / tf.sqrt(variance + 1e-12)
        return tf.sigmoid(self.gain * _decorrelate(image, channels))

    def finish(self, params: Any) -> Any:
        return params

    def update(self, params: Any, grad: Any, state: tuple[Any, Any], step: Any, total: Any,
               signs: Any) -> tuple[Any, tuple[Any, Any]]:
        return _adam(params, grad, state, step, _schedule(self.learning_rate, self.final_rate, step, total))


@dataclass(frozen=True)
class LogitAscent:
    """Pixels through a sigmoid, `unit = sigmoid(z)`, Adam on the logits `z` with a cosine learning-rate decay,
    and a penalty on logits past `margin` (pixels nearer the range's ends than sigmoid(-margin)).

    The sigmoid keeps every image valid without clipping, and its gradient never reaches zero, so a pixel pushed to
    an end can come back; Adam gives every pixel its own step size. Alone it pins most pixels at the ends (the
    objective rewards contrast), which the penalty stops: it costs, per image, `saturation_weight` times the mean
    squared excess of the logits past `margin`, as a share of the image's own objective (`penalty`), so its pull
    is the same whatever the scale of the layer's activations.
    """

    learning_rate: float = 0.5
    final_rate: float | None = 0.05
    margin: float = 3.0  # logit of 0.953: pixels between 4.7% and 95.3% of the range cost nothing
    saturation_weight: float = 4.0
    decorrelate: bool = False
    name: str = "logit"
    jitter: Jitter | None = None

    def param_shape(self, height: int, width: int, channels: int) -> tuple[int, ...]:
        return (height, width, channels)

    def init(self, rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
        # The tutorials' start: grey plus 20% noise (logits of 0.4-0.6).
        return rng.uniform(-0.405, 0.405, (height, width, channels)).astype(np.float32)

    def image(self, params: Any, width: int) -> Any:
        import tensorflow as tf

        channels = int(params.shape[-1])
        return tf.sigmoid(_decorrelate(params, channels) if self.decorrelate else params)

    def finish(self, params: Any) -> Any:
        return params

    def penalty(self, params: Any) -> Any:
        """(B,) the saturation penalty of each image, as a share of its objective."""
        import tensorflow as tf

        excess = tf.nn.relu(tf.abs(params) - self.margin)
        return self.saturation_weight * tf.reduce_mean(tf.square(excess), axis=[1, 2, 3])

    def update(self, params: Any, grad: Any, state: tuple[Any, Any], step: Any, total: Any,
               signs: Any) -> tuple[Any, tuple[Any, Any]]:
        return _adam(params, grad, state, step, _schedule(self.learning_rate, self.final_rate, step, total))


@dataclass(frozen=True)
class ProjectedAscent(PixelParameters):
    """Adam on the pixels themselves, each step projected onto the valid images with a saturation budget: at most
    `budget` of a pattern's values may lie within `margin` of the range's ends, the rest are held inside
    [margin, 1 - margin]. The projection is exact (the Euclidean nearest such image): every value outside the band
    is clipped to it except the `budget` share farthest outside, which are only clipped to [0, 1].

    A budget instead of a penalty: the best valid image of a trained filter is mostly two-level (1,600 steps of
    unconstrained projected Adam leave 53-81% of the values at the ends past the first layer), and the budget
    costs it 2-3% (`benchmarks/pattern_bound.py`), where a penalty on every pixel near the ends costs 5-10%.
    `budget` None: the valid range only (the first conv layer, whose best image is two-level).
    """

    learning_rate: float = 0.25  # constant: in 40 steps a decay gives up more than it gains (see benchmarks/)
    final_rate: float | None = None
    # Descent takes smaller steps: Adam's first step moves every pixel by the rate, and at 0.25 that contrast
    # switches on, 40-60x, the very filters descent must switch off (the example CNN's conv3).
    descent_rate: float = 0.05
    # Ascent maximises the filter's mean output plus this share of its mean pre-activation: at 0.25 per step many
    # cells switch off at once and a ReLU passes them no gradient; with it they can come back (a random
    # MobileNetV2's Conv1, ReLU6: 1.00x -> 1.19x the tutorial's; the example CNN's mean 1.08x -> 1.22x; the
    # trained test CNNs' +1-2%).
    pre_share: float = 0.1
    budget: float | None = 0.10
    margin: float = 0.0101  # just outside the scorecard's saturation margin (1%)
    # The first conv layer is linear in the pixels up to its activation: its best image is two-level, so no budget
    # there (False: the same budget everywhere, as the upper-bound benchmark measures it).
    free_first_layer: bool = True
    name: str = "projected"
    jitter: Jitter | None = None

    def project(self, x: Any) -> Any:
        """(B, H, W, C) -> the nearest valid images within the saturation budget."""
        import tensorflow as tf

        if self.budget is None:
            return tf.clip_by_value(x, 0.0, 1.0)
        size = int(np.prod(x.shape[1:]))
        flat = tf.reshape(x, [-1, size])
        band = tf.clip_by_value(flat, self.margin, 1.0 - self.margin)
        # The `free` values farthest outside the band (top_k breaks ties by position: exactly `free` of them).
        free = max(1, int(self.budget * size))
        chosen = tf.math.top_k(tf.abs(flat - band), free, sorted=False).indices
        rows = tf.broadcast_to(tf.range(tf.shape(flat)[0])[:, None], tf.shape(chosen))
        mask = tf.scatter_nd(tf.stack([rows, chosen], axis=-1), tf.ones_like(chosen, tf.bool), tf.shape(flat))
        keep = mask & (flat != band)
        return tf.reshape(tf.where(keep, tf.clip_by_value(flat, 0.0, 1.0), band), tf.shape(x))

    def move(self, params: Any, grad: Any, state: tuple[Any, Any], step: Any, total: Any,
             signs: Any) -> tuple[Any, tuple[Any, Any]]:
        """The Adam step before the projection: it does not depend on the budget, so variants that differ only
        in theirs share it (see `update`)."""
        import tensorflow as tf

        rate = _schedule(self.learning_rate, self.final_rate, step, total)
        rate = tf.where(signs > 0, rate, self.descent_rate)[:, None, None, None]
        return _adam(params, grad, state, step, rate)

    def update(self, params: Any, grad: Any, state: tuple[Any, Any], step: Any, total: Any,
               signs: Any) -> tuple[Any, tuple[Any, Any]]:
        params, state = self.move(params, grad, state, step, total, signs)
        return self.project(params), state


Method = ProjectedAscent | PixelAscent | FourierAscent | MacoAscent | LogitAscent


def method_named(name: str) -> Method:
    """The parameterisation behind `--pattern-method` (`registry.PATTERN_METHODS` names its class here)."""
    if name not in registry.names(registry.PATTERN_METHODS):
        raise ValueError(f"unknown pattern method {name!r}")
    return globals()[registry.pattern_method(name).parameters]()
