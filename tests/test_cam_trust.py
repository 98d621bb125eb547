"""Deletion / insertion curves with memory bounded in the input size, the same curves as all variants at once,
and progress while they run."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

from reportgen.techniques import cam_trust
from reportgen.techniques.cam_trust import CurvesProgress, blurred, deletion_insertion, pixel_order


def _all_at_once(probabilities, image, heatmaps, classes, steps=16, seed=0):
    """The curves as they were first computed: every variant at full size in float64, in one call."""
    height, width = image.shape[:2]
    rng = np.random.default_rng(seed)
    counts = np.round(np.linspace(0.0, 1.0, steps + 1) * height * width).astype(np.int64)
    mean_colour = image.reshape(-1, image.shape[-1]).mean(axis=0)
    start = blurred(image)
    variants = []
    for heatmap in heatmaps:
        ranks = pixel_order(heatmap, (height, width), rng)
        taken = (ranks[None] < counts[:, None, None])[..., None]
        variants.append(np.where(taken, mean_colour, image))
        variants.append(np.where(taken, image, start))
    probs = probabilities(np.concatenate(variants).astype(np.float32)).reshape(len(heatmaps), 2, steps + 1, -1)
    picked = probs[np.arange(len(heatmaps)), :, :, np.asarray(classes)]
    return picked[:, 0], picked[:, 1]


def _probabilities(batch: np.ndarray) -> np.ndarray:
    """A 'model' of three classes: mean red, mean green in the centre, mean blue, softmaxed."""
    h, w = batch.shape[1:3]
    scores = np.stack([batch[..., 0].mean(axis=(1, 2)), batch[:, h // 4:3 * h // 4, w // 4:3 * w // 4, 1].mean(
        axis=(1, 2)), batch[..., 2].mean(axis=(1, 2))], axis=1).astype(np.float64)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_chunked_curves_match_all_variants_at_once(monkeypatch):
    monkeypatch.setattr(cam_trust, "CURVE_CHUNK_VARIANTS", 34)  # one map's curves a chunk: three maps take three
    rng = np.random.default_rng(3)
    image = rng.random((40, 56, 3)).astype(np.float32) * 4
    heatmaps = [rng.random((5, 7)).astype(np.float32) for _ in range(3)]
    calls = []

    def probabilities(batch):
        calls.append(batch.dtype)
        return _probabilities(batch)

    curves = deletion_insertion(probabilities, image, heatmaps, [0, 1, 2], steps=16, seed=5)
    deletion, insertion = _all_at_once(_probabilities, image, heatmaps, [0, 1, 2], steps=16, seed=5)
    np.testing.assert_allclose(curves.deletion, deletion, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(curves.insertion, insertion, rtol=1e-6, atol=1e-7)
    assert len(calls) > 1 and set(calls) == {np.dtype(np.float32)}  # in chunks, never float64 copies


def test_memory_is_bounded_in_the_image_size(monkeypatch):
    """A 1024 px image with 3 maps: all variants at once in float64 would be 2 x 3 x 17 x 25 MB = 2.6 GB."""
    seen = []

    def probabilities(batch):
        seen.append(batch.nbytes)
        return np.tile([[0.2, 0.3, 0.5]], (len(batch), 1))

    image = np.random.default_rng(0).random((1024, 1024, 3)).astype(np.float32)
    heatmaps = [np.random.default_rng(i).random((32, 32)).astype(np.float32) for i in range(3)]
    tracemalloc.start()
    curves = deletion_insertion(probabilities, image, heatmaps, [0, 1, 2])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert curves.deletion.shape == (3, 17)
    assert max(seen) <= max(cam_trust.CURVE_CHUNK_BYTES, image.nbytes)
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_pixels_are_ranked_at_a_bounded_resolution():
    image = np.zeros((2048, 1024, 3), np.float32)
    image[:1024] = 1.0  # the top half is bright
    heatmap = np.zeros((8, 8), np.float32)
    heatmap[:4] = 1.0  # the map points at it

    def probabilities(batch):
        p = batch[:, :1024, :, 0].mean(axis=(1, 2)).astype(np.float64)
        return np.stack([1 - p, p], axis=1)

    curves = deletion_insertion(probabilities, image, [heatmap], [1], steps=4)
    # Deleted pixels take the mean colour (0.5): the top half goes first, then the dark half changes nothing.
    np.testing.assert_allclose(curves.deletion[0], [1.0, 0.75, 0.5, 0.5, 0.5], atol=0.01)


def test_progress_is_reported_per_chunk_and_throttled(monkeypatch):
    monkeypatch.setattr(cam_trust, "CURVE_CHUNK_VARIANTS", 34)
    image = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
    updates = []
    deletion_insertion(_probabilities, image, [np.ones((4, 4))] * 3, [0, 1, 2],
                       progress=lambda done, total: updates.append((done, total)))
    # Both curves' ends (intact, all deleted, blurred) are shared by the maps: 3 variants, then 15 per curve.
    assert len(updates) > 1 and updates[-1] == (3 + 2 * 3 * 15, 3 + 2 * 3 * 15)
    assert [d for d, _ in updates] == sorted(d for d, _ in updates)

    now = [0.0]
    lines = []
    tracker = CurvesProgress(lines.append, images=2, clock=lambda: now[0], every=5.0)
    step = tracker.image(0)
    for done in range(1, 11):
        now[0] += 2.0  # a chunk every 2 s: a line every 5 s at most, never 10 s without one
        step(done, 10)
    assert 3 <= len(lines) <= 5 and all("image 1 of 2" in line for line in lines)


@pytest.mark.parametrize("size", [(7, 9), (300, 200)])
def test_pixel_order_is_a_permutation(size):
    ranks = pixel_order(np.random.default_rng(1).random((3, 3)), size, np.random.default_rng(0))
    assert sorted(ranks.ravel().tolist()) == list(range(size[0] * size[1]))
    assert cv2 is not None
