"""The bundled example and `reportgen demo`: offline, complete, and showing what training changed."""

from __future__ import annotations

import json

import numpy as np

from reportgen.example import example_images_dir, example_metadata, example_model_path
from reportgen.example.shapes import CLASS_NAMES, generate


def test_example_model_is_small_accurate_and_described():
    metadata = example_metadata()
    assert example_model_path().stat().st_size <= 2 * 1024 * 1024
    assert metadata["test_accuracy"] >= 0.95
    assert metadata["class_names"] == list(CLASS_NAMES)
    for name in CLASS_NAMES:
        assert len(list((example_images_dir() / name).glob("*.png"))) >= 3


def test_example_model_classifies_fresh_held_out_shapes(keras):
    """The recorded accuracy is real: the shipped model on newly drawn shapes (a seed it never saw)."""
    data = generate(200, seed=4242)
    model = keras.models.load_model(example_model_path(), compile=False)
    predicted = np.argmax(model.predict(data.images.astype(np.float32) / 255.0, verbose=0), axis=1)
    assert np.mean(predicted == data.labels) >= 0.95


def test_shapes_dataset_is_deterministic_and_boxed():
    a, b = generate(16, seed=3), generate(16, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, generate(16, seed=4).images)
    for image, (x0, y0, x1, y1) in zip(a.images, a.boxes, strict=True):
        assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]


def test_demo_writes_a_report_that_shows_training(cli, tmp_path):
    out = tmp_path / "demo"
    result = cli("demo", "-o", out, "--quiet", "--sections", "summary,weights")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "report.json").read_text())
    assert manifest["class_names"] == list(CLASS_NAMES)
    assert {image["label"] for image in manifest["images"]} == set(CLASS_NAMES)
    assert all((out / f["file"]).is_file() for s in manifest["sections"] for f in s["figures"])
    tensors = {s["layer"]: s["data"]["tensors"][0] for s in manifest["sections"]
               if s["kind"] == "weights" and "layer" in s}
    assert set(tensors) == {"conv1", "conv2", "conv3", "predictions"}
    for layer, tensor in tensors.items():
        # Training moved every kernel far from its initialisation, and the report says so.
        assert tensor["initialiser_distance"]["statistic"] > tensor["initialiser_distance"]["critical"], layer
        assert tensor["trained"]["std"] != tensor["fresh"]["std"]
