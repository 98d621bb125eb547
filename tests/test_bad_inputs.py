"""Models reportgen cannot fully explain: each gets a clear message (exit 2) or a report of what applies."""

from __future__ import annotations

import json

import pytest

from reportgen.api import generate_report
from reportgen.config import ReportOptions
from reportgen.errors import ModelLoadError


def _save(model, tmp_path, name):
    path = tmp_path / f"{name}.keras"
    model.save(path)
    return path


def test_non_image_input_is_refused(keras, cli, tmp_path, image_folder):
    inputs = keras.Input((10,))
    path = _save(keras.Model(inputs, keras.layers.Dense(2)(inputs)), tmp_path, "dense_only")
    result = cli("generate", path, image_folder, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "needs images" in result.output and "Traceback" not in result.output


def test_sequence_input_is_refused(keras, tmp_path, image_folder):
    inputs = keras.Input((10, 3))  # a Conv1D model: (batch, steps, channels), not an image
    model = keras.Model(inputs, keras.layers.Conv1D(2, 3, name="conv1d")(inputs))
    with pytest.raises(ModelLoadError, match=r"input has shape \(None, 10, 3\).*needs images"):
        generate_report(model, [image_folder], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_several_inputs_are_refused(keras, tmp_path, image_folder):
    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    model = keras.Model([a, b], keras.layers.Add()([a, b]))
    with pytest.raises(ModelLoadError, match="2 inputs"):
        generate_report(model, [image_folder], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_several_outputs_need_output_option(keras, tmp_path, image_folder):
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    model = keras.Model(inputs, [keras.layers.Dense(2, activation="softmax", name="kind")(pooled),
                                 keras.layers.Dense(3, activation="softmax", name="colour")(pooled)])
    with pytest.raises(ModelLoadError, match="--output"):
        generate_report(model, [image_folder], tmp_path / "out")
    with pytest.raises(ModelLoadError, match="not an output"):
        generate_report(model, [image_folder], tmp_path / "out", ReportOptions(output="nope"))
    result = generate_report(model, [image_folder], tmp_path / "out",
                             ReportOptions(output="colour", sections=("summary", "predictions")))
    manifest = json.loads(result.manifest.read_text())
    assert manifest["model"]["output"] == "colour" and manifest["model"]["classes"] == 3


def test_channels_first_is_refused(keras, tmp_path, image_folder):
    inputs = keras.Input((3, 16, 16))
    outputs = keras.layers.Conv2D(4, 3, data_format="channels_first", name="conv")(inputs)
    with pytest.raises(ModelLoadError, match="channels_first"):
        generate_report(keras.Model(inputs, outputs), [image_folder], tmp_path / "out")


def test_no_conv_layer_reports_what_applies(keras, tmp_path, image_folder):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Flatten()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="dense")(x), name="mlp")
    result = generate_report(model, [image_folder], tmp_path / "out")
    manifest = json.loads(result.manifest.read_text())
    kinds = {s["kind"] for s in manifest["sections"]}
    assert {"summary", "weights", "predictions"} <= kinds
    assert [s["layer"] for s in manifest["sections"] if s["kind"] == "weights" and "layer" in s] == ["dense"]
    # What could not be shown is said, not silently dropped.
    said = " ".join(result.warnings)
    assert "feature maps: the model has no conv or pooling layer" in said
    assert "cam: the model has no convolutional layer" in said
    assert not any(s["kind"] == "feature_maps" and "layer" in s for s in manifest["sections"])
