"""Which preprocessing fits the labels? The model's accuracy and confidence under every preprocessing mode.

A model takes its inputs the way it was trained (pixels/255, [-1, 1], BGR minus the ImageNet mean...), and nothing
in a model file says which. On labelled images the labels do: the same images, preprocessed each way, through the
same model. The probe only swaps the preprocessing function; the pixels stay as loading gave them (resized, maybe
converted to greyscale), so the comparison isolates the one choice the user makes with `--preprocess`.

"Clearly better" is a paired decision on the same images, McNemar's exact test: of the images that exactly one of
two modes classifies correctly (the discordant pairs), each is as likely to favour either mode if the two fit the
labels equally well, so the count favouring the candidate is Binomial(discordant, 1/2). A candidate is clearly
better when that two-sided p-value is below `SIGNIFICANCE` shared over every candidate (Bonferroni), its accuracy
is at least `MIN_GAIN` higher (a significant 2-point gain is not worth a rerun), and at least `MIN_IMAGES`
labelled images were probed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen.loading.preprocess import Preprocessor
from reportgen.registry import PREPROCESS_MODES, names

# The caller picks at most this many labelled images: 256 images through 5 modes costs 1,280 forward passes.
PROBE_IMAGES = 256
# Below this many labelled images the probe claims nothing, whatever the test says.
MIN_IMAGES = 30
# Family-wise two-sided significance of "clearly better", shared (Bonferroni) over the candidate modes.
SIGNIFICANCE = 0.01
# A clearly better mode also gains at least this much accuracy over the mode used.
MIN_GAIN = 0.05
# Images per forward pass: one shape, so a traced model call is traced once per mode family.
BATCH = 64


def candidate_modes() -> tuple[str, ...]:
    """Every concrete preprocessing mode (`auto` only picks one of these). Each is defined for any number of
    channels (`Preprocessor` averages the ImageNet statistics for greyscale), so a greyscale model tries them all."""
    return tuple(mode for mode in names(PREPROCESS_MODES) if mode != "auto")


@dataclass(frozen=True)
class ModeFit:
    """How well the model's predictions fit the labels when its inputs are preprocessed with `mode`."""

    mode: str
    n: int  # labelled images probed
    accuracy: float  # share whose most probable class is the label
    mean_confidence: float  # mean of the largest class probability
    mean_true_probability: float  # mean probability of the labelled class
    gains: int  # images this mode classifies correctly and the mode used does not
    losses: int  # images the mode used classifies correctly and this mode does not
    p_value: float  # McNemar's exact two-sided test against the mode used (1.0 for the mode used itself)


@dataclass(frozen=True)
class PreprocessProbe:
    """Every candidate mode's fit to the labels, the mode used, the best fit, and a clearly better one if any."""

    used: str  # the mode the report used
    reason: str  # why it was used (`Preprocessor.reason`: "chosen with --preprocess tf", "auto: ...")
    fits: tuple[ModeFit, ...]  # one per candidate mode, in `candidate_modes()` order
    best: str  # the mode with the highest accuracy (then mean true-class probability; the mode used on a tie)
    better: str | None  # a mode that fits the labels clearly better than the one used (module docstring); None
    threshold: float  # the per-comparison p-value a clearly better mode had to beat (SIGNIFICANCE / candidates)

    @property
    def n(self) -> int:
        return self.fits[0].n if self.fits else 0

    def fit(self, mode: str) -> ModeFit:
        return next(fit for fit in self.fits if fit.mode == mode)


def mcnemar_p(gains: int, losses: int) -> float:
    """McNemar's exact two-sided p-value: twice the binomial tail P(X >= max(gains, losses)), X ~ Bin(gains +
    losses, 1/2), capped at 1. Computed in integers, so it stays exact for any count the probe sees."""
    total, extreme = gains + losses, max(gains, losses)
    if total == 0:
        return 1.0
    tail = sum(math.comb(total, k) for k in range(extreme, total + 1))
    return min(1.0, 2 * tail / 2 ** total)


def probe_preprocessing(model: Any, pixels: np.ndarray, labels: Sequence[int] | np.ndarray, used: str, *,
                        channels: int | None = None, reason: str = "",
                        batch_size: int = BATCH) -> PreprocessProbe:
    """Run the labelled images through `model` under every candidate mode and compare each with `used`.

    `model` is a Keras model (called once per batch and mode; outputs made probabilities the way the predictions
    section does, decided once on the mode used) or a callable from a float32 batch of model inputs to class
    probabilities (n, classes). `pixels` are the images as loading gives them before preprocessing: float32 0-255,
    (n, h, w, channels); more than `PROBE_IMAGES` are thinned to that many, evenly spaced. `labels` are the class
    indices. `used` is the mode in use (resolved: not `auto`); `reason` says why, for the finding's text.
    """
    modes = candidate_modes()
    if used not in modes:
        raise ValueError(f"the mode used must be one of {', '.join(modes)} (auto resolved), not {used!r}")
    pixels = np.asarray(pixels, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if pixels.ndim != 4 or len(pixels) != len(labels):
        raise ValueError(f"pixels must be (n, h, w, c) with one label per image: got {pixels.shape} and "
                         f"{len(labels)} labels")
    channels = pixels.shape[-1] if channels is None else channels
    if channels != pixels.shape[-1]:
        raise ValueError(f"pixels have {pixels.shape[-1]} channels, the model takes {channels}")
    if len(pixels) > PROBE_IMAGES:  # evenly spaced: a folder sorted by class keeps every class
        keep = np.linspace(0, len(pixels) - 1, PROBE_IMAGES).round().astype(int)
        pixels, labels = pixels[keep], labels[keep]
    if len(labels) and labels.min() < 0:
        raise ValueError("labels must be class indices (>= 0); leave unlabelled images out")
    ordered = (used, *(mode for mode in modes if mode != used))  # the mode used first: it fixes the output method
    predict = _probability_function(model) if len(pixels) else None
    correct: dict[str, np.ndarray] = {}
    stats: dict[str, tuple[float, float]] = {}
    for mode in ordered:
        preprocessor = Preprocessor(mode, channels=channels)
        batches = [np.asarray(predict(preprocessor.apply(pixels[start:start + batch_size])), dtype=np.float64)
                   for start in range(0, len(pixels), batch_size)]
        probabilities = np.concatenate(batches) if batches else np.zeros((0, 1))
        if len(labels) and labels.max() >= probabilities.shape[1]:
            raise ValueError(f"label {int(labels.max())} is outside the model's {probabilities.shape[1]} classes")
        correct[mode] = probabilities.argmax(axis=1) == labels
        true = probabilities[np.arange(len(labels)), labels]
        stats[mode] = (_mean(probabilities.max(axis=1, initial=0.0)), _mean(true))

    fits = tuple(_fit(mode, correct[mode], correct[used], *stats[mode]) for mode in modes)
    threshold = SIGNIFICANCE / max(1, len(modes) - 1)
    by_fit = sorted(fits, key=lambda f: (-f.accuracy, -f.mean_true_probability, f.mode != used))
    clear = [f for f in by_fit if f.mode != used and _clearly_better(f, fits[modes.index(used)], threshold)]
    return PreprocessProbe(used=used, reason=reason, fits=fits, best=by_fit[0].mode,
                           better=clear[0].mode if clear else None, threshold=threshold)


def _probability_function(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A batch of model inputs -> class probabilities: a Keras model's outputs converted as the predictions section
    converts them (the method decided on the first batch, which is the mode used's), or the caller's callable."""
    import keras

    if not isinstance(model, keras.Model):
        return model
    import tensorflow as tf

    from reportgen.techniques.predictions import compiled, convert, final_layer, probability_method

    call = compiled(lambda x: model(x, training=False), model)
    activation = final_layer(model).activation
    method: list[str] = []  # decided once, so every mode's outputs are read the same way

    def predict(inputs: np.ndarray) -> np.ndarray:
        raw = np.asarray(call(tf.constant(inputs, tf.float32)), dtype=np.float64).reshape(len(inputs), -1)
        if not method:
            method.append(probability_method(raw, activation)[0])
        return convert(raw, method[0])

    return predict


def _fit(mode: str, correct: np.ndarray, used_correct: np.ndarray, confidence: float, true: float) -> ModeFit:
    gains = int(np.sum(correct & ~used_correct))
    losses = int(np.sum(~correct & used_correct))
    return ModeFit(mode=mode, n=len(correct), accuracy=_mean(correct), mean_confidence=confidence,
                   mean_true_probability=true, gains=gains, losses=losses, p_value=mcnemar_p(gains, losses))


def _clearly_better(candidate: ModeFit, used: ModeFit, threshold: float) -> bool:
    return (candidate.n >= MIN_IMAGES and candidate.accuracy - used.accuracy >= MIN_GAIN
            and candidate.gains > candidate.losses and candidate.p_value < threshold)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def finding_text(probe: PreprocessProbe) -> str | None:
    """The verdict's sentence when another mode fits the labels clearly better; None when there is nothing to say."""
    if probe.better is None:
        return None
    better, used = probe.fit(probe.better), probe.fit(probe.used)
    why = f" ({probe.reason})" if probe.reason else ""
    return (f"Another preprocessing fits the labels better: `--preprocess {better.mode}` gives "
            f"{better.accuracy:.0%} accuracy (mean true-class probability {better.mean_true_probability:.2f}) on "
            f"{better.n} labelled images against {used.accuracy:.0%} ({used.mean_true_probability:.2f}) with "
            f"`{used.mode}`, the mode used{why}; {better.gains} images are right only with {better.mode}, "
            f"{better.losses} only with {used.mode} (McNemar's exact test, p = {better.p_value:.2g}). "
            f"Rerun with --preprocess {better.mode} if the model was trained that way.")
