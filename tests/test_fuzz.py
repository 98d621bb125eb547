"""Hypothesis-generated small CNNs: the report always renders, report.json has no NaN, and every section that
applies to the model is there."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reportgen.api import generate_report
from reportgen.config import ReportOptions

pytestmark = pytest.mark.slow

BLOCKS = ("conv", "pool", "bn", "relu", "sepconv", "dwconv")


@st.composite
def architectures(draw):
    size = draw(st.sampled_from([16, 20, 24, 32]))
    channels = draw(st.sampled_from([1, 3]))
    blocks = draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=5))
    classes = draw(st.sampled_from([1, 2, 5]))
    seed = draw(st.integers(0, 1000))
    return size, channels, blocks, classes, seed


def _build(keras, size, channels, blocks, classes, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, channels))
    x = inputs
    for i, block in enumerate(blocks):
        if block == "conv":
            x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        elif block == "sepconv":
            x = keras.layers.SeparableConv2D(4, 3, padding="same", name=f"sep{i}")(x)
        elif block == "dwconv":
            x = keras.layers.DepthwiseConv2D(3, padding="same", name=f"dw{i}")(x)
        elif block == "pool" and x.shape[1] >= 4:
            x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
        elif block == "bn":
            x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        elif block == "relu":
            x = keras.layers.Activation("relu", name=f"relu{i}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    activation = "sigmoid" if classes == 1 else "softmax"
    return keras.Model(inputs, keras.layers.Dense(classes, activation=activation, name="out")(x), name="fuzz")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arch=architectures())
def test_random_cnns_always_render(keras, shared_images, tmp_path_factory, arch):
    from reportgen.graph import layer_output_shapes, walk_layers
    from reportgen.layer_kinds import sections_for

    model = _build(keras, *arch)
    out = tmp_path_factory.mktemp("fuzz") / "report"
    options = ReportOptions(steps=4, filters=2, cam_methods=("gradcam",))
    generate_report(model, [shared_images], out, options)
    manifest = json.loads((out / "report.json").read_text(),
                          parse_constant=lambda name: pytest.fail(f"report.json holds {name}"))
    assert "<html" in (out / "index.html").read_text()
    shapes = layer_output_shapes(model, tuple(model.inputs[0].shape[1:]))
    expected = {(kind, node.path) for node in walk_layers(model)
                for kind in sections_for(node.layer, shapes[node.path])}
    present = {(s["kind"], s.get("layer")) for s in manifest["sections"]}
    for kind, layer in expected:
        if kind in manifest["options"]["sections"]:
            assert (kind, layer) in present, (kind, layer)
    # The model-wide sections apply to every classifier: predictions for every image, and a map per image for
    # Grad-CAM wherever there is a spatial layer to explain, with a class section for each class explained.
    kinds = {s["kind"] for s in manifest["sections"]}
    assert {"summary", "weights", "predictions", "cam", "class"} <= kinds
    assert len(manifest["predictions"]) == len(manifest["images"])
    class_sections = {s["class"] for s in manifest["sections"] if s["kind"] == "class" and "class" in s}
    top = {p["top_k"][0]["class_name"] for p in manifest["predictions"]}
    if any(block in ("conv", "sepconv", "dwconv") for block in arch[2]):
        assert {h["image"] for h in manifest["heatmaps"]} == {i["id"] for i in manifest["images"]}
        assert top <= {h["class_name"] for h in manifest["heatmaps"]} == class_sections
    else:  # nothing to explain at a layer: said, and the classes still get their sections
        assert "heatmaps" not in manifest and any(w.startswith("cam: ") for w in manifest["warnings"])
        assert top <= class_sections
    for figure in (f for s in manifest["sections"] for f in s["figures"]):
        assert (out / figure["file"]).stat().st_size > 0
    assert np.isfinite([s for s in manifest["seconds"].values()]).all()
