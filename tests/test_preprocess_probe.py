"""The preprocessing probe: a tiny CNN trained with `tf` preprocessing is caught when the report uses `scale`, and
nothing is claimed when the mode used is right or the images are too few; the probe's numbers equal `model.predict`
on images preprocessed by hand (keras.applications' own `preprocess_input` for caffe, tf and torch); the decision
rule's edges (McNemar's p-value, the accuracy gain, the minimum n) on a scripted model whose every answer is known.
"""

from __future__ import annotations

import numpy as np
import pytest

from reportgen.loading.preprocess import Preprocessor
from reportgen.techniques.preprocess_probe import (
    MIN_GAIN,
    MIN_IMAGES,
    PROBE_IMAGES,
    SIGNIFICANCE,
    candidate_modes,
    finding_text,
    mcnemar_p,
    probe_preprocessing,
)

CLASSES = 5
SIZE = 32


def brightness_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Striped textures whose mean brightness is the class (48, 88, ..., 208), with a random tint and noise: the
    class lives in the absolute input level, which is exactly what a preprocessing mode shifts and scales."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    rng.shuffle(labels)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    pixels = np.empty((n, SIZE, SIZE, 3), np.float32)
    for i, label in enumerate(labels):
        angle, period, phase = rng.uniform(0, np.pi), rng.uniform(4, 10), rng.uniform(0, 2 * np.pi)
        stripes = 15 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase)
        tint = rng.uniform(-8, 8, 3)
        noise = rng.normal(0, 4, (SIZE, SIZE, 3))
        pixels[i] = np.clip(48 + 40 * label + stripes[..., None] + tint + noise, 0, 255)
    return pixels, labels


def by_hand(keras, pixels: np.ndarray, mode: str) -> np.ndarray:
    """Model inputs written out independently of `Preprocessor`: keras.applications for its three modes."""
    from keras.applications import imagenet_utils

    if mode in ("caffe", "tf", "torch"):
        return imagenet_utils.preprocess_input(pixels.copy(), data_format="channels_last", mode=mode)
    return pixels / 255.0 if mode == "scale" else pixels.copy()


def train(keras, mode: str, seed: int = 0):
    """A conv -> GAP -> dense classifier trained on `mode`-preprocessed images (inputs made by hand)."""
    keras.utils.set_random_seed(seed)
    pixels, labels = brightness_images(400, seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(CLASSES, name="logits")(x)
    outputs = keras.layers.Activation("softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.03), "sparse_categorical_crossentropy")
    model.fit(by_hand(keras, pixels, mode), labels, epochs=10, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def tf_model(keras):
    return train(keras, "tf")


@pytest.fixture(scope="module")
def scale_model(keras):
    return train(keras, "scale")


@pytest.fixture(scope="module")
def held_out():
    return brightness_images(200, seed=99)


def test_a_tf_model_probed_with_scale_names_tf(tf_model, held_out):
    pixels, labels = held_out
    probe = probe_preprocessing(tf_model, pixels, labels, "scale", reason="auto: a model of no known family")
    assert probe.best == "tf" and probe.better == "tf"
    tf_fit, scale_fit = probe.fit("tf"), probe.fit("scale")
    assert tf_fit.accuracy - scale_fit.accuracy >= 0.5 and tf_fit.p_value < probe.threshold
    assert probe.n == len(labels) and [fit.mode for fit in probe.fits] == list(candidate_modes())
    text = finding_text(probe)
    assert text is not None and "`--preprocess tf` gives" in text
    assert "with `scale`, the mode used (auto: a model" in text
    assert f"{tf_fit.accuracy:.0%} accuracy" in text and f"on {len(labels)} labelled images" in text
    assert f"against {scale_fit.accuracy:.0%}" in text and "Rerun with --preprocess tf" in text


def test_the_right_mode_in_use_claims_nothing(tf_model, scale_model, held_out):
    pixels, labels = held_out
    probe = probe_preprocessing(tf_model, pixels, labels, "tf")
    assert probe.better is None and probe.best == "tf" and finding_text(probe) is None
    probe = probe_preprocessing(scale_model, pixels, labels, "scale")
    assert probe.better is None and probe.best == "scale" and finding_text(probe) is None


def test_too_few_images_claim_nothing(tf_model, held_out):
    pixels, labels = held_out
    probe = probe_preprocessing(tf_model, pixels[:MIN_IMAGES - 1], labels[:MIN_IMAGES - 1], "scale")
    # tf fits far better even here, and the test alone would say so: only the minimum n holds the claim back.
    assert probe.best == "tf" and probe.fit("tf").accuracy - probe.fit("scale").accuracy > 0.5
    assert probe.fit("tf").p_value < probe.threshold
    assert probe.better is None and finding_text(probe) is None


def test_numbers_equal_model_predict_on_inputs_made_by_hand(keras, tf_model, held_out):
    pixels, labels = held_out
    probe = probe_preprocessing(tf_model, pixels, labels, "scale")
    logits = keras.Model(tf_model.input, tf_model.get_layer("logits").output)  # the same model without softmax
    from_logits = probe_preprocessing(logits, pixels, labels, "scale")
    for mode in candidate_modes():
        probabilities = tf_model.predict(by_hand(keras, pixels, mode), verbose=0).astype(np.float64)
        fit = probe.fit(mode)
        assert fit.accuracy == pytest.approx(np.mean(probabilities.argmax(1) == labels), abs=1e-12)
        assert fit.mean_confidence == pytest.approx(probabilities.max(1).mean(), rel=1e-5)
        assert fit.mean_true_probability == pytest.approx(probabilities[np.arange(len(labels)), labels].mean(),
                                                          rel=1e-5, abs=1e-7)
        # A logits model's outputs are turned into the same probabilities (softmax applied).
        assert from_logits.fit(mode).mean_true_probability == pytest.approx(fit.mean_true_probability, rel=1e-4,
                                                                            abs=1e-6)


def test_mcnemar_p_against_binomial_tails_by_hand():
    assert mcnemar_p(8, 0) == pytest.approx(2 / 2**8)
    assert mcnemar_p(2, 10) == pytest.approx(2 * (1 + 12 + 66) / 2**12)  # P(X <= 2 | 12) = P(X >= 10 | 12)
    assert mcnemar_p(5, 5) == 1.0 and mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 4) == 1.0
    assert mcnemar_p(120, 0) == pytest.approx(2.0**-119)  # exact far into the tail


def scripted(outcomes: dict[str, np.ndarray], calls: list[int]):
    """A model answering from a table: `outcomes[mode][i]` says whether image i is classified right under `mode`.

    Each image's pixel (0, 0) is 0, (0, 1) is 255 and (0, 2) holds its index, so the model sees which mode made
    its input (the two reference pixels) and which image it is (the index, undone through that mode)."""
    references = {mode: Preprocessor(mode, 3).apply(np.array([[0.0] * 3, [255.0] * 3], np.float32))
                  for mode in candidate_modes()}

    def predict(inputs: np.ndarray) -> np.ndarray:
        calls.append(len(inputs))
        mode = next(m for m, ref in references.items() if np.allclose(inputs[0, 0, :2], ref, atol=1e-4))
        index = Preprocessor(mode, 3).invert(inputs)[:, 0, 2, 0].round().astype(int)
        right = outcomes[mode][index]
        probabilities = np.full((len(inputs), 2), 0.2)
        probabilities[np.arange(len(inputs)), np.where(right, 0, 1)] = 0.8  # every label is class 0
        return probabilities

    return predict


def scripted_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.full((n, 4, 4, 3), 100.0, np.float32)
    pixels[:, 0, 0], pixels[:, 0, 1] = 0.0, 255.0
    pixels[:, 0, 2, 0] = np.arange(n)
    return pixels, np.zeros(n, int)


def table(n: int, used_right: int, gains: int) -> dict[str, np.ndarray]:
    """`scale` (the mode used) right on the first `used_right` images; `tf` right on those and `gains` more;
    every other mode right on none."""
    outcomes = {mode: np.zeros(n, bool) for mode in candidate_modes()}
    outcomes["scale"][:used_right] = True
    outcomes["tf"][:used_right + gains] = True
    return outcomes


@pytest.mark.parametrize(("n", "gains", "better"), [
    (100, 10, "tf"),  # +10%, p = 2/2^10 = 0.00195 < 0.01/4
    (100, 9, None),  # +9%, p = 2/2^9 = 0.0039: not significant after the correction for 4 candidates
    (256, 13, "tf"),  # +5.1%, p = 2/2^13
    (256, 12, None),  # +4.7%: significant (p = 2/2^12) but below MIN_GAIN
    (MIN_IMAGES, MIN_IMAGES // 2, "tf"),  # the minimum n is enough
])
def test_the_decision_rule_at_its_edges(n, gains, better):
    assert SIGNIFICANCE == 0.01 and MIN_GAIN == 0.05  # the cases above are sized for these constants
    pixels, labels = scripted_images(n)
    probe = probe_preprocessing(scripted(table(n, n // 4, gains), []), pixels, labels, "scale")
    fit = probe.fit("tf")
    assert (fit.gains, fit.losses) == (gains, 0) and fit.p_value == pytest.approx(2 / 2**gains)
    assert fit.accuracy - probe.fit("scale").accuracy == pytest.approx(gains / n)
    assert probe.best == "tf" and probe.better == better


def test_one_call_per_mode_per_batch_and_at_most_probe_images():
    n = PROBE_IMAGES + 40
    pixels, labels = scripted_images(n)
    pixels[:, 0, 2, 0] = np.arange(n) % 256  # the index pixel holds 0-255: the table repeats beyond 256
    outcomes = {mode: np.ones(256, bool) for mode in candidate_modes()}
    calls: list[int] = []
    probe = probe_preprocessing(scripted(outcomes, calls), pixels, labels, "tf", batch_size=100)
    assert probe.n == PROBE_IMAGES and probe.better is None
    assert calls == [100, 100, 56] * len(candidate_modes())


def test_greyscale_pixels_try_every_mode_and_bad_input_fails():
    seen: list[tuple[float, float]] = []

    def predict(inputs: np.ndarray) -> np.ndarray:
        seen.append((float(inputs.min()), float(inputs.max())))
        return np.tile([0.6, 0.4], (len(inputs), 1))

    pixels = np.stack([np.zeros((8, 8, 1)), np.full((8, 8, 1), 255.0)]).astype(np.float32)
    probe = probe_preprocessing(predict, pixels, [0, 0], "scale", channels=1)
    assert [fit.mode for fit in probe.fits] == list(candidate_modes()) and probe.better is None
    # What each mode gave a greyscale model for pixels 0 and 255 (caffe: minus the mean of the three ImageNet means).
    caffe_mean = (123.68 + 116.779 + 103.939) / 3
    expected = {"scale": (0, 1), "none": (0, 255), "caffe": (-caffe_mean, 255 - caffe_mean), "tf": (-1, 1)}
    for (low, high), mode in zip(seen, ("scale", *(m for m in candidate_modes() if m != "scale")), strict=True):
        if mode in expected:
            assert (low, high) == pytest.approx(expected[mode], abs=1e-3)
    with pytest.raises(ValueError, match="auto"):
        probe_preprocessing(predict, pixels, [0, 0], "auto")
    with pytest.raises(ValueError, match="channels"):
        probe_preprocessing(predict, pixels, [0, 0], "scale", channels=3)
    with pytest.raises(ValueError, match="outside"):
        probe_preprocessing(predict, pixels, [0, 2], "scale")
