"""Predictions: probabilities from softmax, sigmoid and logit heads, names (files, folders, ImageNet), top-k,
accuracy, confusion matrix, --classes, and the predictions section."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reportgen.config import ReportOptions
from reportgen.errors import InputError
from reportgen.loading.labels import imagenet_class_names, resolve_class_names
from reportgen.techniques.predictions import (
    Probabilities,
    compute_predictions,
    final_layer,
    image_targets,
    predict_raw,
    resolve_classes,
    softmax,
    to_probabilities,
)


def test_shipped_imagenet_names():
    names = imagenet_class_names()
    assert len(names) == 1000
    assert (names[0], names[1], names[281], names[999]) == ("tench", "goldfish", "tabby", "toilet tissue")
    assert (names[2], names[417], names[817], names[950]) == ("great white shark", "balloon", "sports car", "orange")
    # Two synsets share a name in the official list; they stay distinct entries in output order.
    assert names[134] == names[517] == "crane"


def test_probabilities_from_every_kind_of_head():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    probs = softmax(logits)
    assert to_probabilities(probs, "softmax").method == "model softmax"
    applied = to_probabilities(logits, "linear")
    assert applied.method == "softmax applied"
    np.testing.assert_allclose(applied.values, probs)
    np.testing.assert_allclose(applied.values.sum(1), 1.0)
    # Unknown final layer (e.g. a Lambda softmax): the numbers decide.
    assert to_probabilities(probs, "other").method == "outputs sum to 1"
    assert to_probabilities(logits, "other").method == "softmax applied"
    # Multi-label sigmoids stay independent.
    multi = to_probabilities(np.array([[0.9, 0.8]]), "sigmoid")
    assert multi.method == "model sigmoid" and multi.values.sum() == pytest.approx(1.7)
    # One unit: two classes, p(class 0) = 1 - p(class 1), from a sigmoid or from a logit.
    single = to_probabilities(np.array([[0.8], [0.1]]), "sigmoid")
    np.testing.assert_allclose(single.values, [[0.2, 0.8], [0.9, 0.1]])
    logit = to_probabilities(np.array([[0.0], [np.log(4.0)]]), "linear")
    assert logit.method == "sigmoid applied"
    np.testing.assert_allclose(logit.values, [[0.5, 0.5], [0.2, 0.8]])


def test_final_layer_activation(keras, nested_model):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
    separate = keras.Model(inputs, keras.layers.Activation("softmax", name="probs")(keras.layers.Dense(3)(x)))
    assert (final_layer(separate).path, final_layer(separate).activation) == ("probs", "softmax")
    softmax_layer = keras.Model(inputs, keras.layers.Softmax(name="sm")(keras.layers.Dense(3)(x)))
    assert final_layer(softmax_layer).activation == "softmax"
    assert final_layer(keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))).activation == "linear"
    assert (final_layer(nested_model).path, final_layer(nested_model).activation) == ("head", "softmax")
    # A head that is itself a nested Sequential.
    head = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="sigmoid", name="out")], name="top")
    wrapped = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3),
                                keras.layers.GlobalAveragePooling2D(), head])
    assert (final_layer(wrapped).path, final_layer(wrapped).activation) == ("top/out", "sigmoid")


def test_top_k_accuracy_and_confusion():
    values = np.array([
        [0.7, 0.2, 0.1],  # label 0: right
        [0.5, 0.4, 0.1],  # label 1: wrong, in the top 2
        [0.1, 0.3, 0.6],  # label 2: right
        [0.2, 0.2, 0.6],  # no label
        [0.3, 0.3, 0.4],  # label 0: wrong, ties keep class order (0 before 1)
    ])
    predictions = compute_predictions(Probabilities(values, "model softmax", ""), [0, 1, 2, None, 0], top_k=2)
    np.testing.assert_array_equal(predictions.top_indices, [[0, 1], [0, 1], [2, 1], [2, 0], [2, 0]])
    np.testing.assert_allclose(predictions.top_probabilities[:, 0], [0.7, 0.5, 0.6, 0.6, 0.4])
    assert predictions.labelled == 4
    assert predictions.accuracy == pytest.approx(0.5)
    assert predictions.top_k_accuracy == pytest.approx(1.0)
    np.testing.assert_array_equal(predictions.confusion, [[1, 0, 1], [1, 0, 0], [0, 0, 1]])
    unlabelled = compute_predictions(Probabilities(values, "", ""), [None] * 5, top_k=5)
    assert unlabelled.accuracy is None and unlabelled.confusion is None and unlabelled.top_indices.shape == (5, 3)


def test_classes_option():
    names = ("cat", "dog", "Bird", "7")
    assert resolve_classes(["dog", "0", "bird", "7", "dog"], names) == (1, 0, 2, 3)  # "7" is a name here
    with pytest.raises(InputError, match="--classes: 'zebra' is neither a class name nor an index"):
        resolve_classes(["zebra"], names)
    with pytest.raises(InputError, match="--classes: index 9 is out of range"):
        resolve_classes(["9"], names)


def test_image_targets_put_the_top_prediction_first_without_duplicates():
    rows = image_targets(np.array([2, 0]), np.array([2, 1]), [1])
    assert [(t.class_index, t.reasons) for t in rows[0]] == [(2, ("top prediction", "label")), (1, ("requested",))]
    assert [(t.class_index, t.reasons) for t in rows[1]] == [(0, ("top prediction",)), (1, ("label", "requested"))]


def write_flat_images(folder, count):
    """Unlabelled random PNGs (no class folders)."""
    import cv2

    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for k in range(count):
        cv2.imwrite(str(folder / f"image_{k}.png"), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    return folder


def tiny_model(keras, units, activation, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(units, activation=activation)])


def test_a_1000_way_model_gets_imagenet_names(keras, tmp_path):
    from reportgen.api import generate_report

    names, _ = resolve_class_names(1000)
    assert names.source == "imagenet" and names.names[281] == "tabby"
    model = tiny_model(keras, 1000, "softmax")
    images = write_flat_images(tmp_path / "images", 2)
    result = generate_report(model, [images], tmp_path / "out", ReportOptions(sections=("predictions",), top_k=3))
    manifest = json.loads(result.manifest.read_text())
    assert manifest["model"]["class_names_from"] == "imagenet"
    imagenet = set(imagenet_class_names())
    for entry in manifest["predictions"]:
        assert len(entry["top_k"]) == 3 and all(t["class_name"] in imagenet for t in entry["top_k"])
        index = entry["top_k"][0]["class_index"]
        assert entry["top_k"][0]["class_name"] == imagenet_class_names()[index]


def test_sigmoid_model_predicts_two_classes(keras, tmp_path):
    from reportgen.api import generate_report

    model = tiny_model(keras, 1, "sigmoid")
    images = write_flat_images(tmp_path / "images", 3)
    result = generate_report(model, [images], tmp_path / "out", ReportOptions(sections=("predictions",)))
    manifest = json.loads(result.manifest.read_text())
    assert manifest["class_names"] == ["class 0", "class 1"]
    assert manifest["sections"][0]["data"]["probabilities"] == "model sigmoid"
    for entry in manifest["predictions"]:
        assert len(entry["top_k"]) == 2
        assert sum(t["probability"] for t in entry["top_k"]) == pytest.approx(1.0)


def test_predictions_section_with_folder_labels(saved_models, shared_images, tmp_path):
    from reportgen.api import generate_report
    from reportgen.loading.models import load_model

    out = tmp_path / "out"
    result = generate_report(saved_models["plain"], [shared_images], out, ReportOptions(sections=("predictions",)))
    manifest = json.loads(result.manifest.read_text())
    section = manifest["sections"][0]
    assert section["id"] == "predictions" and section["kind"] == "predictions"
    data = section["data"]
    assert data["labelled"] == 6 and data["probabilities"] == "model softmax"
    matrix = np.array(data["confusion"]["matrix"])
    assert matrix.sum() == 6
    correct = sum(p["correct"] for p in manifest["predictions"])
    assert data["accuracy"] == pytest.approx(correct / 6)
    assert np.trace(matrix) == correct
    # The stored probabilities are the model's own.
    from reportgen.loading.images import discover_images, load_images

    model = load_model(saved_models["plain"]).model
    loaded = load_images(discover_images([shared_images]), (32, 32, 3))
    raw = predict_raw(model, loaded.pixels / 255.0)
    for entry, row in zip(manifest["predictions"], raw, strict=True):
        assert entry["top_k"][0]["probability"] == pytest.approx(float(row.max()), rel=1e-5)
    assert any(f["key"] == "predictions-confusion" for f in section["figures"])
    assert 'id="prediction-' in result.index_html.read_text()
