"""Validation-set scale: every dataset-level statistic streamed over batches equals the same statistic computed at
once; the detail sample is deterministic; a large image set never sits in memory whole and its page stays small."""

from __future__ import annotations

import json
import tracemalloc

import cv2
import numpy as np
import pytest

from reportgen.errors import InputError
from reportgen.techniques.class_stats import ClassAccumulator
from reportgen.techniques.detail import choose_detail
from reportgen.techniques.evaluation import EvaluationAccumulator
from reportgen.techniques.streaming import TopK

RNG = np.random.default_rng(0)


def random_splits(n: int, parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    cuts = np.sort(rng.choice(np.arange(1, n), size=parts - 1, replace=False))
    return np.split(order, cuts)


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_evaluation_merged_over_random_splits_equals_the_statistics_at_once():
    n, classes = 301, 5
    probabilities = softmax(RNG.normal(scale=2.0, size=(n, classes)))
    labels = RNG.integers(-1, classes, n)  # -1: unlabelled
    names = [f"img{i:03d}.png" for i in range(n)]
    indices = np.arange(n)

    parts = []
    for split in random_splits(n, 5, RNG):
        part = EvaluationAccumulator(classes)
        part.update(indices[split], [names[i] for i in split], labels[split], probabilities[split])
        parts.append(part)
    merged = parts.pop(2)
    for part in parts:
        merged.merge(part)
    got = merged.result()

    # At once, by hand.
    known = labels >= 0
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((classes, classes), int)
    for label, guess in zip(labels[known], predicted[known], strict=True):
        confusion[label, guess] += 1
    np.testing.assert_array_equal(got.confusion, confusion)
    assert got.accuracy == pytest.approx(np.mean(predicted[known] == labels[known]))
    for metrics in got.per_class:
        c = metrics.class_index
        tp = np.sum((predicted == c) & (labels == c))
        precision = tp / np.sum((predicted == c) & known)
        recall = tp / np.sum(labels == c)
        assert metrics.support == np.sum(labels == c)
        assert metrics.precision == pytest.approx(precision) and metrics.recall == pytest.approx(recall)
        assert metrics.f1 == pytest.approx(2 * precision * recall / (precision + recall))
    confidence = probabilities.max(axis=1)[known]
    correct = (predicted == labels)[known]
    ece = 0.0
    for low, high in zip(np.linspace(0, 1, 16)[:-1], np.linspace(0, 1, 16)[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    assert got.calibration.ece == pytest.approx(ece)
    wrong = np.flatnonzero(known & (predicted != labels))
    expected = sorted(wrong, key=lambda i: (-probabilities[i].max(), names[i]))[:8]
    assert [r.index for r in got.confident_mistakes] == expected


def test_top_k_keeps_ties_by_name_whatever_the_batches():
    scores = np.array([3, 1, 3, 2, 3, 0, 2, 3], float)
    names = ["h", "b", "d", "a", "c", "e", "f", "g"]
    expected = sorted(range(8), key=lambda i: (-scores[i], names[i]))[:3]  # c, d, g: three of the four 3s
    for split in (random_splits(8, 3, RNG), [np.arange(8)], [np.array([i]) for i in range(8)]):
        parts = []
        for part_indices in split:
            top = TopK(3)
            top.update(scores[part_indices], [names[i] for i in part_indices], part_indices)
            parts.append(top)
        merged = parts[0]
        for other in parts[1:]:
            merged.merge(other)
        assert [r.index for r in merged.result()] == expected


def test_class_accumulator_merged_equals_at_once():
    n, classes = 90, 3
    probabilities = softmax(RNG.normal(size=(n, classes)))
    labels = RNG.integers(-1, classes, n)
    maps = RNG.random((n, 4, 4)).astype(np.float32)
    means = RNG.random((n, 6)).astype(np.float32)
    names = [f"{i}.png" for i in range(n)]
    whole = ClassAccumulator(classes, (4, 4), 6)
    whole.update(np.arange(n), names, labels, probabilities, maps, means)
    merged = ClassAccumulator(classes, (4, 4), 6)
    for split in random_splits(n, 4, RNG):
        part = ClassAccumulator(classes, (4, 4), 6)
        part.update(split, [names[i] for i in split], labels[split], probabilities[split], maps[split], means[split])
        merged.merge(part)
    owner = np.where(labels >= 0, labels, probabilities.argmax(axis=1))
    for a, b in zip(whole.result(), merged.result(), strict=True):
        members = owner == a.class_index
        unit = maps[members] / maps[members].reshape(members.sum(), -1).max(axis=1)[:, None, None]
        np.testing.assert_allclose(a.mean_map, unit.mean(axis=0), rtol=1e-5)
        np.testing.assert_allclose(b.mean_map, a.mean_map, rtol=1e-6)
        np.testing.assert_allclose(b.filter_means, means[members].mean(axis=0), rtol=1e-5)
        assert a.images == b.images == members.sum()
        assert [r.index for r in a.most_confident] == [r.index for r in b.most_confident]


def test_detail_sample_is_deterministic_stratified_and_takes_confident_mistakes():
    names = [f"{c}/{i}.png" for c in ("a", "b", "c") for i in range(20)]
    labels = np.repeat([0, 1, 2], 20)
    predicted = labels.copy()
    predicted[[3, 25]] = [1, 2]  # two mistakes
    confidence = np.full(60, 0.6)
    confidence[3], confidence[25] = 0.99, 0.7
    chosen = choose_detail(names, labels, predicted, confidence, 8, seed=1)
    assert len(chosen) == 8 and 3 in chosen  # the most confident mistake (2 = 25% of 8)
    assert 25 in chosen
    counts = np.bincount(labels[chosen], minlength=3)
    assert counts.max() - counts.min() <= 1  # stratified
    assert choose_detail(names, labels, predicted, confidence, 8, seed=1) == chosen
    assert choose_detail(names, labels, predicted, confidence, 8, seed=2) != chosen
    # Listing order does not matter: the same names are chosen.
    order = RNG.permutation(60)
    again = choose_detail([names[i] for i in order], labels[order], predicted[order], confidence[order], 8, seed=1)
    assert sorted(names[order[i]] for i in again) == sorted(names[i] for i in chosen)
    assert choose_detail(names, labels, predicted, confidence, 8, 0, ("b/*", "c/3.png")) == [*range(20, 40), 43]
    with pytest.raises(InputError, match="--detail-images"):
        choose_detail(names, labels, predicted, confidence, 8, 0, ("nope*",))


def write_pngs(folder, count, size=16, classes=("x", "y")):
    rng = np.random.default_rng(1)
    for i in range(count):
        target = folder / classes[i % len(classes)]
        target.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target / f"{i:05d}.png"), rng.integers(0, 255, (size, size, 3), np.uint8))
    return folder


def tiny_model(keras, size=16):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c2")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="out")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name="tiny")


def test_dataset_examples_equal_a_brute_force_argsort_and_class_maps_the_per_image_gradcam(keras, tmp_path):
    """Streamed top-k per filter against the filters' means of every image computed at once with a Keras
    sub-model; the class-average map against the mean of each image's own Grad-CAM computed image by image."""
    from test_cams import functions_for, targets_for

    from reportgen.api import generate_report
    from reportgen.config import ReportOptions
    from reportgen.loading.images import discover_images, load_images
    from reportgen.techniques.cams import CamSettings, compute_maps

    model = tiny_model(keras)
    folder = write_pngs(tmp_path / "images", 70)
    result = generate_report(model, [folder], tmp_path / "out", ReportOptions(
        sections=("dataset_examples", "class"), examples=4, filters=3, batch_size=16, detail=4, save_arrays=True))
    manifest = json.loads(result.manifest.read_text())
    sources = discover_images([folder])
    names = [s.name for s in sources]
    x = load_images(sources, (16, 16, 3)).pixels / 255.0
    from reportgen.techniques.dataset_examples import receptive_fields

    fields = receptive_fields(model, ["c1", "c2"], (16, 16, 3))
    assert fields["c1"].size == (3, 3) and fields["c2"].size == (5, 5)  # two 3x3 convs, stride 1
    assert receptive_fields(model, ["c2", "c1"], (16, 16, 3)) == fields  # one pass for both layers
    for layer in ("c1", "c2"):
        acts = keras.Model(model.inputs, model.get_layer(layer).output)(x).numpy()
        means = acts.mean(axis=(1, 2))
        for f in range(3):
            top = sorted(range(70), key=lambda i: (-means[i, f], names[i]))[:4]
            bottom = sorted(range(70), key=lambda i: (means[i, f], names[i]))[:4]
            for kind, expected in (("top", top), ("bottom", bottom)):
                entry = next(e for e in manifest["dataset_examples"] if e["layer"] == layer and e["filter"] == f
                             and e["kind"] == kind)
                assert [e["image"] for e in entry["images"]] == [names[i] for i in expected]
                np.testing.assert_allclose([e["activation"] for e in entry["images"]], means[expected, f],
                                           rtol=1e-4, atol=1e-6)
                # Each patch is the receptive field of the filter's strongest (weakest) cell on that image.
                for e, i in zip(entry["images"], expected, strict=True):
                    values = acts[i, :, :, f]
                    cell = np.unravel_index(values.argmax() if kind == "top" else values.argmin(), values.shape)
                    assert e["patch"] == list(fields[layer].box(*cell))
    assert manifest["dataset"]["images"] == 70 and len(manifest["images"]) == 70
    assert len(manifest["dataset"]["detail_images"]) == 4

    # Class-average Grad-CAM over all 70 images against each image's map computed by the per-image pipeline.
    with np.load(tmp_path / "out" / "arrays.npz") as arrays:
        labels = np.array([0 if s.label == "x" else 1 for s in sources])
        maps = compute_maps(functions_for(model, "c2", 2), x.astype(np.float32), targets_for([[c] for c in labels]),
                            ["gradcam"], CamSettings(), np.zeros(3), 1.0)["gradcam"]
        for c, name in enumerate(("x", "y")):
            unit = [m[0] / m[0].max() for m, label in zip(maps, labels, strict=True) if label == c and m[0].max() > 0]
            zero = sum(1 for m, label in zip(maps, labels, strict=True) if label == c and m[0].max() <= 0)
            expected = np.sum(unit, axis=0) / (len(unit) + zero)
            key = next(k for k in arrays.files if k.endswith(".dataset.average") and f"class-{name}" in k)
            np.testing.assert_allclose(arrays[key], expected, rtol=1e-4, atol=1e-6)


def test_the_reader_never_holds_the_image_set(tmp_path):
    """600 images of 64 px are 29 MB of float pixels; streaming them in batches of 16 holds a few batches."""
    from reportgen.loading.images import discover_images
    from reportgen.loading.stream import ImageReader

    folder = write_pngs(tmp_path / "images", 600, size=64)
    reader = ImageReader(discover_images([folder]), (64, 64, 3))
    whole = 600 * 64 * 64 * 3 * 4
    tracemalloc.start()
    seen = 0
    for batch in reader.batches(16):
        seen += len(batch.indices)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seen == 600
    assert peak < whole / 6, f"peak {peak / 1e6:.1f} MB of {whole / 1e6:.1f} MB"


def test_two_thousand_images_stay_under_the_page_budget(keras, tmp_path):
    from reportgen.api import generate_report
    from reportgen.config import ReportOptions

    folder = write_pngs(tmp_path / "images", 2000)
    result = generate_report(tiny_model(keras), [folder], tmp_path / "out", ReportOptions(steps=5, filters=4))
    manifest = json.loads(result.manifest.read_text())
    assert result.index_html.stat().st_size < 10 * 2**20
    assert len(manifest["images"]) == 2000 and manifest["dataset"]["images"] == 2000
    assert sum(i["detail"] for i in manifest["images"]) == 12
    assert manifest["evaluation"]["labelled"] == 2000
    assert sum(map(sum, manifest["evaluation"]["confusion"])) == 2000


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.text, self.tty = "", tty

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


def test_dataset_progress_is_a_bar_on_a_terminal_and_periodic_lines_elsewhere():
    from reportgen.progress import Progress

    terminal = _Stream(tty=True)
    counter = Progress(stream=terminal).counter("dataset", 100)
    for done in range(0, 101, 10):
        counter(done)
    counter.close()
    assert "\r" in terminal.text and "100/100 images" in terminal.text and "images/s" in terminal.text
    assert "left" in terminal.text

    log = _Stream(tty=False)
    counter = Progress(stream=log).counter("dataset", 100, every=3600)
    for done in range(0, 101, 10):
        counter(done)
    counter.close()
    assert "\r" not in log.text and log.text.count("\n") == 2  # the first line, then the final one

    quiet = _Stream(tty=True)
    counter = Progress(enabled=False, stream=quiet).counter("dataset", 100)
    counter(50)
    counter.close()
    assert quiet.text == ""


def test_a_detail_images_typo_is_refused_before_the_dataset_pass(cli, tmp_path, monkeypatch):
    from reportgen import dataset
    from reportgen.example import example_images_dir, example_model_path

    def never(*args, **kwargs):
        raise AssertionError("the dataset pass ran before the option was checked")

    monkeypatch.setattr(dataset.DatasetPass, "run", never)
    result = cli("generate", example_model_path(), example_images_dir(), "-o", tmp_path / "out", "--detail-images",
                 "circle/*,nomatch*")
    assert result.exit_code == 2 and "--detail-images: 'nomatch*' matches no image" in result.output
    assert not (tmp_path / "out").exists()
