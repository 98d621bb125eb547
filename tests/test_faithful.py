"""What the report says must be true on the networks people have, not only on the bundled one: a trained
mini-Xception (conv -> BN -> ReLU stem, separable-conv residual blocks, a class-score conv before global pooling,
grey input), a keras.applications model with random weights, a BGR (caffe) model."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tensorflow as tf
from real_shapes import build_mini_xception, shapes_arrays, train_on_shapes
from test_cams import functions_for, targets_for

from reportgen.config import ReportOptions
from reportgen.example.shapes import CLASS_NAMES
from reportgen.graph import block_outputs, layer_output_shapes, walk_layers
from reportgen.techniques import cams
from reportgen.techniques.cams import (
    CamInputs,
    CamSettings,
    choose_target_layer,
    compute_maps,
    explain,
    faithfulness,
)
from reportgen.techniques.cams import methods as cam_methods
from reportgen.techniques.predictions import convert, final_layer, predict_raw, probability_method

SIZE = 48


@pytest.fixture(scope="module")
def mini_xception(keras):
    """A mini-Xception trained on grey shapes until it classifies held-out ones (about a minute on 2 cores)."""
    model = build_mini_xception(keras, (SIZE, SIZE, 1), classes=len(CLASS_NAMES))
    accuracy = train_on_shapes(keras, model)
    assert accuracy > 0.9, f"the test model did not learn the shapes ({accuracy:.0%})"
    return model


@pytest.fixture(scope="module")
def grey_shapes():
    images, labels, _ = shapes_arrays(24, 4242, SIZE, gray=True)
    return images, labels, images.astype(np.float32) / 255.0


def default_target(model):
    shapes = layer_output_shapes(model, (SIZE, SIZE, 1))
    return choose_target_layer(walk_layers(model), shapes, blocks=block_outputs(model, (SIZE, SIZE, 1)),
                               classes=len(CLASS_NAMES))


def explain_labels(model, layer, x, labels, methods=("gradcam", "gradcam++", "layercam")):
    raw = predict_raw(model, x)
    method, _ = probability_method(raw, final_layer(model).activation)
    return explain(model, CamInputs(x, targets_for([[int(c)] for c in labels]), np.zeros(1, np.float32), 1.0),
                   list(methods), layer, lambda values: convert(values, method), CamSettings())


def test_default_cam_layer_skips_the_class_score_conv_and_beats_random(mini_xception, grey_shapes):
    _, labels, x = grey_shapes
    layer = default_target(mini_xception)
    # Not the class-score conv (4 channels, one per class, GAP after it), not a layer inside a residual block
    # that the shortcut bypasses: the last block output with a map of at least 7x7.
    assert layer.path == "b2_add" and layer.shape[1:3] == (11, 11)
    assert "class_conv is a class-score convolution" in layer.reason
    results = explain_labels(mini_xception, layer, x, labels)
    for method, scores in faithfulness(results).items():
        assert scores.beats_random, (method, scores)
        assert scores.deletion_auc < scores.random_deletion_auc and scores.insertion_auc > scores.random_insertion_auc


def test_identical_methods_at_a_class_score_conv_are_reported(mini_xception, grey_shapes):
    """At the class-score conv only the class's own channel has a gradient, so Grad-CAM and LayerCAM both draw
    that channel: the same map twice is no independent evidence, and the report says so."""
    _, labels, x = grey_shapes
    shapes = layer_output_shapes(mini_xception, (SIZE, SIZE, 1))
    layer = choose_target_layer(walk_layers(mini_xception), shapes, "class_conv")
    results = explain_labels(mini_xception, layer, x[:8], labels[:8])
    groups = cams.same_maps(results)
    assert any({"gradcam", "layercam"} <= set(group) for group, _ in groups)
    # The check compares maps, not names: the two methods' maps agree everywhere.
    for heatmap in results.for_method("gradcam"):
        other = next(h for h in results.for_method("layercam") if h.image == heatmap.image)
        np.testing.assert_allclose(heatmap.raw / heatmap.raw.max(), other.raw / other.raw.max(), atol=1e-4)


def write_grey_images(folder, images, labels):
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / CLASS_NAMES[label]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / CLASS_NAMES[label] / f"{i}.png"), image[..., 0])
    return folder


def test_a_method_worse_than_random_is_flagged_in_page_warnings_and_summary(mini_xception, grey_shapes, tmp_path,
                                                                            monkeypatch):
    """Grad-CAM's maps turned upside down rank the evidence last: deletion and insertion must say so."""
    from reportgen.api import generate_report

    images, labels, _ = grey_shapes
    folder = write_grey_images(tmp_path / "images", images[:8], labels[:8])
    original = cams.gradcam

    def inverted(batch):
        maps = original(batch)
        return maps.max(axis=(2, 3), keepdims=True) - maps

    monkeypatch.setattr(cam_methods, "gradcam", inverted)  # the function `registry.CAM_METHODS` names for gradcam
    model_path = tmp_path / "mini.keras"
    mini_xception.save(model_path)
    result = generate_report(model_path, [folder], tmp_path / "out",
                             ReportOptions(sections=("predictions", "cam"), cam_methods=("gradcam", "layercam")),
                             class_names=CLASS_NAMES)
    manifest = json.loads(result.manifest.read_text())
    rows = {row["method"]: row for row in next(s for s in manifest["sections"] if s["id"] == "cam")["data"]["methods"]}
    assert rows["gradcam"]["beats_random"] is False and rows["layercam"]["beats_random"] is True
    assert any("Grad-CAM" in w and "no better than a random map" in w for w in result.warnings)
    assert not any("LayerCAM" in w and "no better than a random map" in w for w in result.warnings)
    html = result.index_html.read_text()
    assert "NO BETTER THAN RANDOM" in html and "Grad-CAM does no better than a random map" in html
    summary = (result.out_dir / "summary.md").read_text()
    assert "gradcam **no better than a random map**" in summary and "layercam beats random" in summary


def test_gradcam_plus_plus_is_the_papers_formula_with_real_higher_derivatives(keras):
    """Chattopadhay et al. 2018, eq. 10 with Y = exp(S): alpha = d2Y / (2 d2Y + sum_ab A_ab d3Y), each derivative
    of Y at position (i, j) itself, computed here by nested tapes rather than as powers of the gradient. The map's
    head (conv -> pool -> flatten -> dense) makes gradients vary over the map, where a shortcut such as sum(A g^3)
    in the denominator would differ."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((10, 10, 1))
    a = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="a")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="b")(a)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    model = keras.Model(inputs, outputs)
    head_in = keras.Input((10, 10, 3))
    head = keras.Model(head_in, model.get_layer("logits")(model.get_layer("flat")(model.get_layer("pool")(
        model.get_layer("b")(head_in)))))
    cut = keras.Model(inputs, a)

    rng = np.random.default_rng(1)
    x = rng.random((3, 10, 10, 1), dtype=np.float32)
    classes = [0, 2, 1]
    ours = compute_maps(functions_for(model, "a", 3), x, targets_for([[c] for c in classes]), ["gradcam++"],
                        CamSettings(), np.zeros(1), 1.0)["gradcam++"]
    for image, class_index in enumerate(classes):
        acts = tf.constant(cut(x[image:image + 1]))
        n = int(np.prod(acts.shape))
        with tf.GradientTape(persistent=True) as third:
            third.watch(acts)
            with tf.GradientTape(persistent=True) as second:
                second.watch(acts)
                with tf.GradientTape() as first:
                    first.watch(acts)
                    y = tf.exp(head(acts)[0, class_index])
                d1 = first.gradient(y, acts)
            d2 = tf.linalg.diag_part(tf.reshape(second.jacobian(d1, acts), (n, n)))
        d3 = tf.linalg.diag_part(tf.reshape(third.jacobian(d2, acts), (n, n)))
        d1, d2, d3, acts_np = (np.asarray(t, np.float64).reshape(10, 10, 3) for t in (d1, d2, d3, acts))
        want = np.zeros((10, 10))
        for k in range(3):
            total = acts_np[:, :, k].sum()
            weight = 0.0
            for i in range(10):
                for j in range(10):
                    denominator = 2 * d2[i, j, k] + total * d3[i, j, k]
                    alpha = d2[i, j, k] / denominator if denominator != 0 else 0.0
                    weight += alpha * max(d1[i, j, k], 0.0)
            want += weight * acts_np[:, :, k]
        want = np.maximum(want, 0)
        got = ours[image][0]
        assert want.max() > 0
        # Y = exp(S) scales the weights by a constant: compare the maps at a common scale.
        np.testing.assert_allclose(got / got.max(), want / want.max(), atol=1e-4)


def test_smoothgrad_maps_do_not_depend_on_batching_or_order(keras):
    from test_cams import build_bn_model

    model = build_bn_model(keras, "linear", seed=4)
    functions = functions_for(model, None, 4)
    x = np.random.default_rng(3).random((5, 24, 24, 3), dtype=np.float32)
    rows = [[0], [1], [2], [3], [1]]
    settings = CamSettings(smoothgrad_samples=3, seed=7)
    one_batch = compute_maps(functions, x, targets_for(rows), ["smoothgrad"],
                             CamSettings(**{**settings.__dict__, "batch_size": 5}), np.zeros(3), 1.0)["smoothgrad"]
    order = [4, 2, 0, 3, 1]
    reordered = compute_maps(functions, x[order], targets_for([rows[i] for i in order]), ["smoothgrad"],
                             CamSettings(**{**settings.__dict__, "batch_size": 2}), np.zeros(3), 1.0)["smoothgrad"]
    for position, image in enumerate(order):
        np.testing.assert_allclose(reordered[position][0], one_batch[image][0], rtol=1e-5, atol=1e-7)
    other_seed = compute_maps(functions, x[:1], targets_for(rows[:1]), ["smoothgrad"],
                              CamSettings(**{**settings.__dict__, "seed": 8}), np.zeros(3), 1.0)["smoothgrad"]
    assert not np.allclose(other_seed[0][0], one_batch[0][0])


def test_fresh_copy_of_a_random_weights_application_is_an_independent_draw():
    """`--weights none` draws the model from --seed; the 'freshly initialised' copy must not be that same draw."""
    from reportgen.loading.models import load_model
    from reportgen.techniques.weights import compare_weights, fresh_copy

    model = load_model("mobilenetv2", weights="none", image_size=(32, 32), seed=0).model
    again = load_model("mobilenetv2", weights="none", image_size=(32, 32), seed=0).model
    fresh = fresh_copy(model, 0)
    comparisons = compare_weights(walk_layers(model), walk_layers(fresh))
    assert len(comparisons) > 50
    # Two independent draws of the same initialiser differ by about sqrt(2) of the norm.
    changes = np.array([c.change for c in comparisons])
    assert np.all(changes > 0.5), comparisons[int(np.argmin(changes))].layer
    repeat = compare_weights(walk_layers(fresh), walk_layers(fresh_copy(again, 0)))
    assert all(c.change == 0 for c in repeat)  # and reproducibly so


def test_bgr_first_layer_kernels_are_drawn_in_rgb():
    """Caffe-preprocessed models (VGG16, ResNet50) take B, G, R: a filter that only weighs input channel 0 looks
    at blue, and must be drawn blue, not red."""
    from reportgen.figures import kernel_grid
    from reportgen.loading.preprocess import Preprocessor

    assert Preprocessor("caffe").channel_order == "BGR" and Preprocessor("scale").channel_order == "RGB"
    kernel = np.zeros((3, 3, 3, 1), np.float32)
    kernel[..., 0, 0] = 1.0
    bgr, caption = kernel_grid(kernel, channel_order="BGR")
    rgb, _ = kernel_grid(kernel, channel_order="RGB")
    # The tile's centre pixel: full on the colour of input channel 0, grey (zero weight) on the others.
    centre = tuple(int(v) for v in bgr[bgr.shape[0] // 2, bgr.shape[1] // 2])
    assert centre == (128, 128, 255)
    assert tuple(int(v) for v in rgb[rgb.shape[0] // 2, rgb.shape[1] // 2]) == (255, 128, 128)
    assert "B, G, R" in caption


def test_report_draws_caffe_models_first_kernels_in_rgb_and_says_so(keras, tmp_path):
    from reportgen.api import generate_report

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(2, 3, name="first"),
                              keras.layers.Conv2D(3, 3, name="second"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")])
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.full((16, 16, 3), 90, np.uint8))
    result = generate_report(model, [images], tmp_path / "out", ReportOptions(sections=("weights",),
                                                                              preprocess="caffe"))
    html = result.index_html.read_text()
    assert "the model takes the channels as B, G, R; drawn as R, G, B" in html
    manifest = json.loads(result.manifest.read_text())
    assert manifest["model"]["preprocess"] == "caffe"


def test_random_application_vanishing_layers_and_uniform_outputs_are_flagged(tmp_path):
    """A MobileNetV2 with random weights computes ~1e-8 deep down and gives every class 0.001: the report says so
    instead of stretching noise to full contrast and naming 'tench' the top class."""
    from reportgen.api import generate_report

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    result = generate_report("mobilenetv2", [images], tmp_path / "out", ReportOptions(
        weights="none", image_size=(32, 32), sections=("predictions", "feature_maps")))
    manifest = json.loads(result.manifest.read_text())
    assert any("images get a uniform output" in w for w in result.warnings)
    assert all(p["uniform"] for p in manifest["predictions"])
    assert "uniform: every class 0.1%" in result.index_html.read_text()
    vanishing = [e for e in manifest["feature_maps"] if e["vanishing"]]
    assert vanishing and any(f"activations of {len(vanishing)} layers vanish" in w for w in result.warnings)
    for entry in vanishing:
        section = next(s for s in manifest["sections"] if s["id"] == entry["section"])
        # drawn blank: every channel of every image is a hatched tile, none stretched
        assert all(image["constant_channels"] == entry["channels"] for image in section["data"]["images"])
        assert max(abs(section["data"]["min"]), abs(section["data"]["max"])) < 1e-6


def test_the_page_says_what_was_done_to_the_inputs(keras, tmp_path):
    """Grey model, colour images of two sizes: resizing, the colour conversion, the formula and why it was chosen
    are on the page and in report.json; a Rescaling(1/255) first layer fed pixels / 255 draws a warning."""
    from reportgen.api import generate_report

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((24, 24, 1)), keras.layers.Rescaling(1 / 255, name="rescale"),
                              keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")])
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "big.png"), rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "small.png"), rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))
    auto = generate_report(model, [images], tmp_path / "auto", ReportOptions(sections=("summary",)))
    html = auto.index_html.read_text()
    assert "2 images to 24x24; resized from 80x64 (1)" in html and "1 already that size" in html
    assert "RGB to grey (Rec. 601 luma) (2)" in html
    assert "x = pixel (raw 0-255, the model rescales itself); inputs in [0, 255]" in html
    assert "the model starts with a Rescaling layer" in html
    assert not any(w.startswith("preprocessing:") for w in auto.warnings)
    manifest = json.loads(auto.manifest.read_text())
    assert {i["name"]: i["conversion"] for i in manifest["images"]} == {"big.png": "RGB to grey (Rec. 601 luma)",
                                                                        "small.png": "RGB to grey (Rec. 601 luma)"}
    assert manifest["model"]["preprocess_reason"].startswith("auto:")

    forced = generate_report(model, [images], tmp_path / "forced", ReportOptions(sections=("summary",),
                                                                                  preprocess="scale"))
    warning = next(w for w in forced.warnings if w.startswith("preprocessing:"))
    assert "rescale (Rescaling by 0.003922) expects raw pixels 0-255" in warning and "[0, 1]" in warning
