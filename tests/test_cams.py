"""Class activation maps: exact against direct tape computations, on target on synthetic shapes, better than random
under deletion, and working for sigmoid, nested, legacy .h5 and loaded models; plus the report sections."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tensorflow as tf

from reportgen.config import ReportOptions
from reportgen.errors import InputError
from reportgen.graph import layer_output_shapes, walk_layers
from reportgen.registry import CAM_METHODS as CAM_METHOD_INFO
from reportgen.registry import names
from reportgen.techniques.cam_trust import (
    CURVE_CHUNK_VARIANTS,
    average_ranks,
    deletion_insertion,
    rank_correlation,
    sanity_check,
)
from reportgen.techniques.cams import (
    CURVE_BATCH_LIMIT,
    CamInputs,
    CamSettings,
    MethodBatch,
    ModelFunctions,
    choose_target_layer,
    compute_maps,
    curve_batch_size,
    explain,
    integrated_gradients_attributions,
    score_head,
)
from reportgen.techniques.predictions import Target, convert, final_layer, predict_raw, probability_method

CAM_METHODS = names(CAM_METHOD_INFO)
RNG = np.random.default_rng(0)


def build_bn_model(keras, activation="softmax", classes=4, seed=0):
    """conv -> BN -> ReLU (separate layers) -> GAP -> Dense: Grad-CAM's target must be the ReLU."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.Activation("relu", name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(classes, activation=activation, name="head")(x)
    model = keras.Model(inputs, outputs, name="bn_model")
    # Non-trivial batch-norm statistics, so the BN layer is not an identity.
    bn = model.get_layer("bn2")
    bn.set_weights([w + RNG.uniform(0.2, 0.8, w.shape).astype("float32") for w in bn.get_weights()])
    return model


def functions_for(model, layer_path, units):
    activation = final_layer(model).activation
    head = score_head(model, final_layer(model), units)
    return ModelFunctions(model, head, layer_path, lambda raw: convert(raw, "model softmax" if activation == "softmax"
                                                                        else "softmax applied"))


def targets_for(class_rows):
    return [tuple(Target(c, ("requested",)) for c in row) for row in class_rows]


def reference_gradcam(grad_model, x, pairs):
    """The Keras tutorial's Grad-CAM, one image and class at a time, with a plain GradientTape."""
    out = []
    for image, class_index in pairs:
        with tf.GradientTape() as tape:
            conv, scores = grad_model(x[image:image + 1])
            score = scores[:, class_index]
        grads = tape.gradient(score, conv)
        weights = tf.reduce_mean(grads, axis=(0, 1, 2))
        out.append(np.maximum(np.einsum("hwk,k->hw", conv[0].numpy(), weights.numpy()), 0.0))
    return out


def layer_and_grads(grad_model, x, image, class_index):
    with tf.GradientTape() as tape:
        conv, scores = grad_model(x[image:image + 1])
        score = scores[:, class_index]
    return conv[0].numpy(), tape.gradient(score, conv)[0].numpy()


@pytest.mark.parametrize("activation", ["linear", "softmax"])
def test_gradcam_equals_a_direct_tape_computation(keras, activation):
    model = build_bn_model(keras, activation)
    shapes = layer_output_shapes(model, (24, 24, 3))
    layer = choose_target_layer(walk_layers(model), shapes)
    assert layer.path == "relu2" and "conv2" in layer.reason
    # The reference differentiates the logits: a Dense sharing the head's weights, without the softmax.
    logits = keras.layers.Dense(4, name="logits")
    logits_out = logits(model.get_layer("gap").output)
    logits.set_weights(model.get_layer("head").get_weights())
    grad_model = keras.Model(model.inputs, [model.get_layer("relu2").output, logits_out])

    x = RNG.random((5, 24, 24, 3), dtype=np.float32)
    rows = [(0, 2), (1,), (3, 1, 0), (2,), (0, 3)]  # uneven rows exercise the slot padding
    functions = functions_for(model, layer.path, 4)
    assert functions.head.logits and functions.head.feeder == (None if activation == "linear" else "gap")
    maps = compute_maps(functions, x, targets_for(rows), ["gradcam", "gradcam++", "layercam"],
                        CamSettings(batch_size=2), np.zeros(3), 1.0)
    pairs = [(i, c) for i, row in enumerate(rows) for c in row]
    ours = [m for row in maps["gradcam"] for m in row]
    for got, want in zip(ours, reference_gradcam(grad_model, x, pairs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(want.max())))
    assert max(float(m.max()) for m in ours) > 0

    # Grad-CAM++ (eq. 19 with exp scores) and LayerCAM, written out per channel from the same tape gradients.
    plus = [m for row in maps["gradcam++"] for m in row]
    layercam = [m for row in maps["layercam"] for m in row]
    for (image, class_index), got_plus, got_layer in zip(pairs, plus, layercam, strict=True):
        acts, grads = layer_and_grads(grad_model, x, image, class_index)
        weights = []
        for k in range(acts.shape[-1]):
            g, a = grads[:, :, k].astype(np.float64), acts[:, :, k].astype(np.float64)
            denominator = 2 * g ** 2 + g ** 3 * a.sum()  # eq. 19: g at (i, j), the sum over the map of A
            alpha = np.where(denominator != 0, g ** 2 / np.where(denominator != 0, denominator, 1), 0)
            weights.append((alpha * np.maximum(g, 0)).sum())
        want_plus = np.maximum((acts * np.array(weights)).sum(-1), 0)
        want_layer = np.maximum((np.maximum(grads, 0) * acts).sum(-1), 0)
        np.testing.assert_allclose(got_plus, want_plus, rtol=1e-4, atol=1e-6 * max(1.0, float(want_plus.max())))
        np.testing.assert_allclose(got_layer, want_layer, rtol=1e-5, atol=1e-6 * max(1.0, float(want_layer.max())))


def test_scorecam_matches_a_loop_over_channels_and_caps_them(keras):
    model = build_bn_model(keras, "softmax", seed=1)
    functions = functions_for(model, "relu2", 4)
    x = RNG.random((2, 24, 24, 3), dtype=np.float32)
    rows = [(1, 3), (0,)]

    def reference(image, class_index, keep):
        acts = keras.Model(model.inputs, model.get_layer("relu2").output)(x[image:image + 1]).numpy()[0]
        channels = np.argsort(-acts.reshape(-1, acts.shape[-1]).var(axis=0), kind="stable")[:keep]
        total = np.zeros(acts.shape[:2])
        for k in channels:
            mask = cv2.resize(acts[:, :, k], (24, 24), interpolation=cv2.INTER_LINEAR)
            span = mask.max() - mask.min()
            mask = (mask - mask.min()) / span if span > 0 else np.zeros_like(mask)
            p = model(x[image:image + 1] * mask[None, :, :, None]).numpy()[0, class_index]
            total += p * acts[:, :, k]
        return np.maximum(total, 0)

    for keep in (8, 3):
        maps = compute_maps(functions, x, targets_for(rows), ["scorecam"], CamSettings(scorecam_channels=keep),
                            np.zeros(3), 1.0)["scorecam"]
        for image, row in enumerate(rows):
            for t, class_index in enumerate(row):
                np.testing.assert_allclose(maps[image][t], reference(image, class_index, keep), rtol=1e-4, atol=1e-6)


def test_input_attributions(keras):
    model = build_bn_model(keras, "linear", seed=2)
    functions = functions_for(model, None, 4)
    x = RNG.random((2, 24, 24, 3), dtype=np.float32)
    slots = np.array([[0, 2], [1, 1]], np.int32)
    settings = CamSettings(ig_steps=64)
    batch = MethodBatch(x, slots, None, None, functions, settings, np.zeros(3, np.float32), 1.0)
    # Saliency: |d logit / d pixel|, max over colour channels, against a plain tape.
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logits = model(xt)
        score = tf.reduce_sum(tf.gather(logits, slots[:, 0], batch_dims=1))
    expected = np.abs(tape.gradient(score, xt).numpy()).max(-1)
    maps = compute_maps(functions, x, targets_for([[0, 2], [1]]), ["saliency", "smoothgrad"], CamSettings(
        smoothgrad_noise=0.0, smoothgrad_samples=2), np.zeros(3), 1.0)
    for image in range(2):
        np.testing.assert_allclose(maps["saliency"][image][0], expected[image], rtol=1e-5, atol=1e-7)
        # SmoothGrad without noise is the plain gradient.
        np.testing.assert_allclose(maps["smoothgrad"][image][0], maps["saliency"][image][0], rtol=1e-5, atol=1e-7)
    # Integrated Gradients' completeness: attributions sum to score(x) - score(black image).
    attributions = integrated_gradients_attributions(batch)
    start, end = model(np.zeros_like(x)).numpy(), model(x).numpy()
    for image in range(2):
        for t in range(2):
            gap = end[image, slots[image, t]] - start[image, slots[image, t]]
            assert attributions[image, t].sum() == pytest.approx(gap, rel=0.02, abs=1e-3)


@pytest.fixture(scope="module")
def example():
    """The bundled example model and held-out shapes (seeds 0 and 1000 train and test it)."""
    from reportgen.example import example_model_path
    from reportgen.example.shapes import generate
    from reportgen.loading.models import load_model

    path = example_model_path()
    if not path.exists():
        pytest.skip("the example model has not been trained yet (python -m reportgen.example.train)")
    model = load_model(path).model
    data = generate(100, seed=31337)
    return model, data, data.images.astype(np.float32) / 255.0


def test_gradcam_peaks_inside_the_shape(example):
    model, data, x = example
    layer = choose_target_layer(walk_layers(model), layer_output_shapes(model, (64, 64, 3)))
    assert layer.path == "conv3"
    functions = functions_for(model, layer.path, 4)
    targets = targets_for([[int(label)] for label in data.labels])
    maps = compute_maps(functions, x, targets, ["gradcam"], CamSettings(batch_size=32), np.zeros(3), 1.0)["gradcam"]
    # The peak is a cell of the map (conv3: 16 x 16 cells of 4 x 4 pixels), not a pixel: it falls inside the shape
    # when the pixels it stands for overlap the shape's box. (An upsampled map's arg-max pixel is an artefact of
    # the interpolation, up to half a cell away.)
    inside = []
    for (x0, y0, x1, y1), row in zip(data.boxes, maps, strict=True):
        cell = 64 // row[0].shape[0]
        i, j = np.unravel_index(np.argmax(row[0]), row[0].shape)
        inside.append(cell * j < x1 and x0 < cell * (j + 1) and cell * i < y1 and y0 < cell * (i + 1))
    assert np.mean(inside) >= 0.9, np.mean(inside)


def test_gradcam_deletion_beats_a_random_map(example):
    model, data, x = example
    layer = choose_target_layer(walk_layers(model), layer_output_shapes(model, (64, 64, 3)))
    raw = predict_raw(model, x[:24])
    method, _ = probability_method(raw, final_layer(model).activation)
    inputs = CamInputs(x[:24], targets_for([[int(c)] for c in data.labels[:24]]), np.zeros(3, np.float32), 1.0)
    results = explain(model, inputs, ["gradcam"], layer, lambda values: convert(values, method), CamSettings())
    deletion = np.mean([h.deletion_auc for h in results.heatmaps])
    random_deletion = np.mean([h.random_deletion_auc for h in results.heatmaps])
    insertion = np.mean([h.insertion_auc for h in results.heatmaps])
    random_insertion = np.mean([h.random_insertion_auc for h in results.heatmaps])
    assert deletion < random_deletion and insertion > random_insertion
    # The curves start from the intact image: the first deletion point is the model's probability.
    np.testing.assert_allclose([h.probability for h in results.heatmaps],
                               convert(raw, method)[np.arange(24), data.labels[:24]], rtol=1e-5)
    # The curves' forward passes in batches of 7 rather than the default 64: the same areas.
    rebatched = explain(model, inputs, ["gradcam"], layer, lambda values: convert(values, method),
                        CamSettings(curve_batch_size=7))
    for key in ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc"):
        np.testing.assert_allclose([getattr(h, key) for h in rebatched.heatmaps],
                                   [getattr(h, key) for h in results.heatmaps], rtol=1e-5, atol=1e-6)


def test_sigmoid_model_explains_both_classes(keras):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="c"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1, activation="sigmoid")])
    x = RNG.random((3, 16, 16, 3), dtype=np.float32)
    raw = predict_raw(model, x)
    method, _ = probability_method(raw, final_layer(model).activation)
    probabilities = convert(raw, method)
    assert method == "model sigmoid" and probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-6)
    head = score_head(model, final_layer(model), 1)
    assert head.single_unit and head.logits
    functions = ModelFunctions(model, head, "c", lambda values: convert(values, method))
    maps = compute_maps(functions, x, targets_for([[0, 1]] * 3), ["gradcam"], CamSettings(), np.zeros(3), 1.0)
    # Class 0's logit is -z: its Grad-CAM is the negative part of class 1's pre-ReLU map.
    acts = keras.Model(model.inputs, model.get_layer("c").output)(x).numpy()
    dense = model.layers[-1].get_weights()[0][:, 0]
    signed = np.einsum("bhwk,k->bhw", acts, dense / (14 * 14))
    for i in range(3):
        np.testing.assert_allclose(maps["gradcam"][i][1], np.maximum(signed[i], 0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(maps["gradcam"][i][0], np.maximum(-signed[i], 0), rtol=1e-5, atol=1e-7)


def nested_reference(base, flatten_dense, x, class_index):
    """Grad-CAM on the base's last layer, computed by hand: base -> flatten -> logits = A W + b."""
    kernel, bias = flatten_dense
    with tf.GradientTape() as tape:
        acts = base(x)
        tape.watch(acts)
        logits = tf.matmul(tf.reshape(acts, (acts.shape[0], -1)), kernel) + bias
        score = logits[:, class_index]
    grads = tape.gradient(score, acts).numpy()
    weights = grads.mean(axis=(1, 2))
    return np.maximum(np.einsum("bhwk,bk->bhw", acts.numpy(), weights), 0)


@pytest.mark.parametrize("source", ["memory", "file"])
def test_nested_model(nested_model, saved_models, source):
    from reportgen.loading.models import load_model

    # From the file: a loaded Sequential whose layers may never have been called (no `layer.output`).
    model = nested_model if source == "memory" else load_model(saved_models["nested"]).model
    shapes = layer_output_shapes(model, (32, 32, 3))
    layer = choose_target_layer(walk_layers(model), shapes)
    assert layer.path == "conv_base/block2_conv1"
    head = score_head(model, final_layer(model), 3)
    assert head.feeder == "flatten" and head.logits
    x = RNG.random((2, 32, 32, 3), dtype=np.float32)
    functions = ModelFunctions(model, head, layer.path, lambda values: values)
    maps = compute_maps(functions, x, targets_for([[2], [0]]), ["gradcam"], CamSettings(), np.zeros(3), 1.0)
    dense = nested_model.get_layer("head").get_weights()
    for image, class_index in ((0, 2), (1, 0)):
        want = nested_reference(nested_model.get_layer("conv_base"), dense, x[image:image + 1], class_index)[0]
        np.testing.assert_allclose(maps["gradcam"][image][0], want, rtol=1e-5, atol=1e-6)


def test_logits_are_found_behind_a_nested_head(keras):
    """The softmax sits in a nested Sequential's first layer: its input is what feeds the nested model."""
    keras.utils.set_random_seed(5)
    head = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax", name="out")], name="top")
    model = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(4, 3, name="conv"),
                              keras.layers.GlobalAveragePooling2D(name="gap"), head])
    final = final_layer(model)
    scores = score_head(model, final, 3)
    assert final.path == "top/out" and scores.feeder == "gap"
    x = RNG.random((2, 12, 12, 3), dtype=np.float32)
    functions = ModelFunctions(model, scores, "conv", lambda values: values)
    logits, _ = functions.scores(tf.constant(x), [])
    kernel, bias = head.get_layer("out").get_weights()
    gap = keras.Model(model.inputs, model.get_layer("gap").output)(x).numpy()
    np.testing.assert_allclose(logits.numpy(), gap @ kernel + bias, rtol=1e-5, atol=1e-6)


def test_legacy_h5_with_a_nested_base(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    from reportgen.loading.models import load_model

    tf_keras.utils.set_random_seed(4)
    layers = tf_keras.layers
    base_in = tf_keras.Input((20, 20, 3))
    base_out = layers.Conv2D(5, 3, activation="relu", name="block1_conv1")(base_in)
    base_out = layers.Conv2D(6, 3, activation="relu", name="block2_conv1")(layers.MaxPooling2D()(base_out))
    base = tf_keras.Model(base_in, base_out, name="conv_base")
    model = tf_keras.Sequential([base, layers.Flatten(name="flatten"), layers.Dense(3, activation="softmax",
                                                                                    name="head")])
    model.build((None, 20, 20, 3))
    path = tmp_path / "transfer.h5"
    model.save(path)
    x = RNG.random((2, 20, 20, 3), dtype=np.float32)

    loaded = load_model(path)
    shapes = layer_output_shapes(loaded.model, (20, 20, 3))
    layer = choose_target_layer(walk_layers(loaded.model), shapes)
    assert layer.path == "conv_base/block2_conv1"
    head = score_head(loaded.model, final_layer(loaded.model), 3)
    assert head.feeder == "flatten"
    functions = ModelFunctions(loaded.model, head, layer.path, lambda values: values)
    maps = compute_maps(functions, x, targets_for([[1], [2]]), ["gradcam"], CamSettings(), np.zeros(3), 1.0)
    dense = model.get_layer("head").get_weights()
    for image, class_index in ((0, 1), (1, 2)):
        want = nested_reference(base, dense, x[image:image + 1], class_index)[0]  # computed by tf.keras itself
        np.testing.assert_allclose(maps["gradcam"][image][0], want, rtol=1e-4, atol=1e-6)


def test_cam_layer_option(nested_model, plain_model):
    nodes, shapes = walk_layers(nested_model), layer_output_shapes(nested_model, (32, 32, 3))
    assert choose_target_layer(nodes, shapes, "conv_base/block1_conv1").path == "conv_base/block1_conv1"
    assert choose_target_layer(nodes, shapes, "block1_pool").path == "conv_base/block1_pool"
    assert choose_target_layer(nodes, shapes, "conv_base").path == "conv_base"  # a nested model's 4-D output
    with pytest.raises(InputError, match=r"--cam-layer: head \(Dense\).*4-D"):
        choose_target_layer(nodes, shapes, "head")
    with pytest.raises(InputError, match="--cam-layer: no layer 'nope'"):
        choose_target_layer(nodes, shapes, "nope")
    plain_shapes = layer_output_shapes(plain_model, (32, 32, 3))
    assert choose_target_layer(walk_layers(plain_model), plain_shapes).path == "conv2"


def test_deletion_and_insertion_follow_the_map():
    """A 'model' whose class-1 probability is the share of a bright box still present: the box's own map deletes
    it first (low deletion AUC) and inserts it first (high insertion AUC)."""
    image = np.zeros((16, 16, 3), np.float32)
    image[4:8, 4:8] = 1.0
    calls = []

    def probabilities(batch):
        calls.append(len(batch))
        p = np.clip(batch[:, 4:8, 4:8, 0].mean(axis=(1, 2)), 0, 1).astype(np.float64)
        return np.stack([1 - p, p], axis=1)

    good = np.zeros((4, 4), np.float32)
    good[1, 1] = 1.0  # the cell over the box at 4x4 resolution
    curves = deletion_insertion(probabilities, image, [good, 1.0 - good], [1, 1], steps=16)
    # The curves' shared ends once, then 15 steps per curve and map, in chunks of at most CURVE_CHUNK_VARIANTS.
    assert sum(calls) == 3 + 2 * 2 * 15 and max(calls) <= CURVE_CHUNK_VARIANTS
    assert curves.deletion[0, 0] == pytest.approx(1.0)
    assert curves.deletion_auc[0] < 0.1 < 0.5 < curves.deletion_auc[1]
    assert curves.insertion_auc[0] > 0.9 > curves.insertion_auc[1]


def test_rank_correlation_and_the_sanity_flag():
    a = RNG.random((6, 6))
    assert rank_correlation(a, a) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, a ** 3) == pytest.approx(1.0)  # ranks, not values
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    assert np.isnan(rank_correlation(a, np.zeros_like(a)))
    unchanged = sanity_check("gradcam", [a, a], [a, a ** 2])
    assert unchanged.flagged and unchanged.correlation == pytest.approx(1.0)
    changed = sanity_check("gradcam", [a, a], [RNG.random((6, 6)), np.zeros((6, 6))])
    assert changed.fresh_empty == 1 and changed.compared == 1 and changed.status == "passes"


def test_empty_maps_fail_the_sanity_check_never_pass():
    """An empty map has no ranking: counting its undefined correlation as 0 once made all-empty maps 'pass'."""
    a = RNG.random((6, 6))
    empty = np.zeros((6, 6))
    all_empty = sanity_check("gradcam", [empty, empty], [a, empty])
    assert all_empty.status == "empty maps" and all_empty.flagged and all_empty.trained_empty == 2
    assert "fails" in all_empty.describe()
    nothing_to_compare = sanity_check("gradcam", [a, a], [empty, np.full((6, 6), 3.0)])
    assert nothing_to_compare.status == "undetermined" and nothing_to_compare.flagged
    assert np.isnan(nothing_to_compare.correlation)
    # Tiny float noise over a constant is still one value: no ranking.
    assert sanity_check("gradcam", [np.full((6, 6), 1.0) + 1e-9 * a], [a]).status == "empty maps"


def test_report_sections_manifest_and_arrays(saved_models, shared_images, tmp_path):
    from reportgen.api import generate_report

    options = ReportOptions(sections=("summary", "predictions", "cam", "class"), cam_methods=CAM_METHODS,
                            save_arrays=True, classes=("b",), top_k=2)
    result = generate_report(saved_models["plain"], [shared_images], tmp_path / "out", options)
    manifest = json.loads(result.manifest.read_text())
    sections = {s["id"]: s for s in manifest["sections"]}
    html = result.index_html.read_text()

    heatmaps = manifest["heatmaps"]
    keys = {"method", "image", "class_index", "class_name", "layer", "score", "deletion_auc", "insertion_auc",
            "array_key"}
    assert heatmaps and all(keys <= set(h) for h in heatmaps)
    assert {h["method"] for h in heatmaps} == set(CAM_METHODS)
    # Every image is explained for its top prediction, its label and the requested class "b".
    for image in manifest["images"]:
        explained = {h["class_name"] for h in heatmaps if h["image"] == image["id"] and h["method"] == "gradcam"}
        top = next(p for p in manifest["predictions"] if p["image"] == image["id"])["top_k"][0]["class_name"]
        assert {"b", image["label"], top} == explained
    with np.load(result.out_dir / "arrays.npz") as arrays:
        for h in heatmaps:
            shape = (16, 16) if h["layer"] == "conv2" else (32, 32)  # conv2's resolution, or the input's
            assert h["layer"] in ("conv2", "input") and arrays[h["array_key"]].shape == shape
            assert 0.0 <= h["deletion_auc"] <= 1.0 and 0.0 <= h["insertion_auc"] <= 1.0
    # Each map is judged against a random map of its own resolution: one baseline per image, class and
    # resolution, shared by the methods at that resolution.
    for image in manifest["images"]:
        baselines = {(h["layer"], h["class_index"]): set() for h in heatmaps if h["image"] == image["id"]}
        for h in heatmaps:
            if h["image"] == image["id"]:
                baselines[h["layer"], h["class_index"]].add((h["random_deletion_auc"], h["random_insertion_auc"]))
        assert all(len(values) == 1 for values in baselines.values())
        some_class = next(c for layer, c in baselines if layer == "conv2")
        assert baselines["conv2", some_class] != baselines["input", some_class]
    cam_sections = [s for s in manifest["sections"] if s["kind"] == "cam"]
    assert {s.get("layer") for s in cam_sections[1:5]} == {"conv2"}
    listed = {row["path"] for row in sections["summary"]["data"]["layers"] if "cam" in row["sections"]}
    assert listed == {"conv2"}  # the summary names the layer the maps are taken at
    for s in cam_sections[1:]:
        if s["id"] != "cam-images":  # the per-image rows: every method side by side, no method of its own
            assert s["data"]["sanity"]["correlations"]
    # Trusted: beats random, passes the sanity check, and the model does not look untrained (this one is random).
    untrained = next(f for f in manifest["verdict"] if f["check"] == "training")["data"]["looks_untrained"]
    assert untrained
    trusted = set() if untrained else {m["method"] for m in sections["cam"]["data"]["methods"]
                                       if m["beats_random"] and m["sanity_status"] in ("passes", None)}
    classes = {h["class_name"] for h in heatmaps}
    top_class = {p["image"]: p["top_k"][0]["class_name"] for p in manifest["predictions"]}
    with np.load(result.out_dir / "arrays.npz") as arrays:
        for name in classes:
            section = sections[f"class-{name}"]
            assert section["kind"] == "class" and section["class"] == name
            assert f'id="class-{name}"' in html
            # Each of its images links to that image's row of the predictions table.
            start = html.index(f'id="class-{name}"')
            chunk = html[start:html.index("</details>", start)]  # a class section is folded
            for image_id in section["data"]["images"]:
                assert f'href="#prediction-{image_id}"' in chunk and f'id="prediction-{image_id}"' in html
                assert f'href="#cam-images-{image_id}"' in chunk and f'id="cam-images-{image_id}"' in html
            # Each method's class average is the mean of its images' maps, each scaled to its own maximum; the
            # page draws only the trusted methods' averages.
            averages = section["data"]["average_maps"]
            assert set(averages) == {h["method"] for h in heatmaps if h["class_name"] == name}
            assert {m for m, a in averages.items() if a["drawn"]} == set(averages) & trusted
            start = html.index(f'id="{section["id"]}"')
            chunk = html[start:html.index("</details>", start)]
            assert (f'id="{section["id"]}-averages"' in chunk) == bool(set(averages) & trusted)
            for method, average in averages.items():
                own = [arrays[h["array_key"]] for h in heatmaps if h["class_name"] == name and h["method"] == method]
                expected = np.mean([m / m.max() if m.max() > 0 else np.zeros_like(m) for m in own], axis=0)
                assert average["maps"] == len(own)
                np.testing.assert_allclose(arrays[average["array_key"]], expected, rtol=1e-5, atol=1e-6)
            # Accuracy on the images labelled as this class, from the predictions.
            labelled = [image["id"] for image in manifest["images"] if image["label"] == name]
            if labelled:
                hits = sum(top_class[i] == name for i in labelled)
                assert section["data"]["accuracy"] == pytest.approx(hits / len(labelled))
    overview = sections["classes"]
    assert overview["kind"] == "class" and "class" not in overview
    assert [c["class_name"] for c in overview["data"]["classes"]] == manifest["class_names"]
    assert sections["predictions"]["data"]["labelled"] == 6
    assert len(manifest["predictions"]) == 6 and len(manifest["predictions"][0]["top_k"]) == 2


def test_bad_classes_option_fails_before_any_work(saved_models, shared_images, tmp_path):
    from reportgen.api import generate_report

    options = ReportOptions(sections=("cam",), classes=("zebra",))
    with pytest.raises(InputError, match="--classes: 'zebra'"):
        generate_report(saved_models["plain"], [shared_images], tmp_path / "out", options)
    assert not (tmp_path / "out").exists()


def test_model_without_a_conv_layer_keeps_the_input_methods(keras, shared_images, tmp_path):
    from reportgen.api import generate_report

    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(3)], name="mlp")
    options = ReportOptions(sections=("cam",), cam_methods=("gradcam", "saliency"))
    result = generate_report(model, [shared_images], tmp_path / "out", options)
    assert any("no convolutional layer" in w and "Grad-CAM" in w for w in result.warnings)
    manifest = json.loads(result.manifest.read_text())
    assert {h["method"] for h in manifest["heatmaps"]} == {"saliency"}
    assert all(h["layer"] == "input" for h in manifest["heatmaps"])


def test_cli_reports_a_bad_cam_layer_as_usage_error(cli, saved_models, shared_images, tmp_path):
    result = cli("generate", saved_models["plain"], shared_images, "-o", tmp_path / "out", "--sections", "cam",
                 "--cam-layer", "predictions", "--quiet")
    assert result.exit_code == 2
    assert "--cam-layer: predictions (Dense)" in result.output + (result.stderr or "")


def test_names_tensorflow_cannot_trace_run_eagerly_with_the_same_maps(keras):
    """Keras allows layer names such as `conv 2` or `<b>`; TensorFlow graphs do not, so such models run eagerly."""
    keras.utils.set_random_seed(7)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv <1>")(inputs)
    x = keras.layers.Conv2D(5, 3, activation="relu", name="conv 2")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs, name="m<b>odel")
    functions = functions_for(model, "conv 2", 3)
    assert not functions.traced
    x = RNG.random((2, 16, 16, 3), dtype=np.float32)
    rows = [(0, 2), (1,)]
    maps = compute_maps(functions, x, targets_for(rows), ["gradcam", "saliency"], CamSettings(), np.zeros(3), 1.0)
    logits = keras.layers.Dense(3)
    logits_out = logits(model.layers[-2].output)
    logits.set_weights(model.get_layer("out").get_weights())
    grad_model = keras.Model(model.inputs, [model.get_layer("conv 2").output, logits_out])
    pairs = [(i, c) for i, row in enumerate(rows) for c in row]
    ours = [m for row in maps["gradcam"] for m in row]
    for got, want in zip(ours, reference_gradcam(grad_model, x, pairs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(want.max())))
    assert maps["saliency"][0][1].shape == (16, 16) and maps["saliency"][0][1].max() > 0


def test_every_class_has_an_anchor(keras, tmp_path):
    """Classes that no image predicts, is labelled with or asks for get no section, but a row anchor to link to."""
    from reportgen.api import generate_report

    keras.utils.set_random_seed(8)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(3, 3, name="conv"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(6, activation="softmax")])
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "one.png"), np.full((16, 16, 3), 120, np.uint8))
    result = generate_report(model, [folder], tmp_path / "out", ReportOptions(sections=("class",), classes=("4",)))
    manifest = json.loads(result.manifest.read_text())
    html = result.index_html.read_text()
    class_sections = [s for s in manifest["sections"] if s["kind"] == "class" and "class" in s]
    assert len(class_sections) == 2 and class_sections[-1]["class"] == "class 4"  # its top prediction, and 4
    anchors = [c["anchor"] for c in manifest["sections"][0]["data"]["classes"]]
    assert len(anchors) == 6 and len(set(anchors)) == 6
    for anchor in anchors:
        assert html.count(f'id="{anchor}"') == 1


def test_bfloat16_curves_agree_with_float32_and_shown_probabilities_stay_float32(tmp_path, monkeypatch):
    """On the trained example CNN: deletion and insertion areas from bfloat16 forward passes within 0.02 of the
    float32 ones (0.0015 on average), the same faithfulness verdicts, and every probability shown is float32's."""
    import reportgen.sections.cams as cam_sections
    from reportgen.api import generate_report
    from reportgen.config import ReportOptions
    from reportgen.example import example_images_dir, example_model_path

    runs = {}
    for dtype in ("float32", "bfloat16"):
        monkeypatch.setattr(cam_sections, "ranking_dtype", lambda model, shapes, dtype=dtype: dtype)
        out = tmp_path / dtype
        generate_report(example_model_path(), [example_images_dir()], out,
                        ReportOptions(sections=("cam",), detail=6), force=True)
        manifest = json.loads((out / "report.json").read_text())
        runs[dtype] = manifest
        cam = next(s for s in manifest["sections"] if s["id"] == "cam")
        assert cam["data"]["curves_dtype"] == dtype
    pairs = list(zip(runs["float32"]["heatmaps"], runs["bfloat16"]["heatmaps"], strict=True))
    keys = ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc")
    differences = np.array([abs(a[k] - b[k]) for a, b in pairs for k in keys])
    assert 0 < differences.max() < 0.02 and differences.mean() < 0.005  # really bfloat16, and close
    assert all(a["score"] == b["score"] for a, b in pairs)
    assert ([w for w in runs["float32"]["warnings"] if "random map" in w]
            == [w for w in runs["bfloat16"]["warnings"] if "random map" in w])


def test_gradient_passes_are_traced_and_never_differentiate_the_weights(residual_model):
    """Every function that takes a gradient is traced, even one small call (an eager convolution gradient also
    computes the filter gradient, whose eager oneDNN kernel aborts on real models), and its tape watches no
    weight: the gradients equal an independent computation with a plain tape through a Keras sub-model."""
    import keras

    from reportgen.graph import input_tape

    layer = next(n.path for n in walk_layers(residual_model) if n.path.endswith("add"))
    head = score_head(residual_model, final_layer(residual_model), 3)
    functions = ModelFunctions(residual_model, head, layer, lambda raw: raw)
    assert hasattr(functions._layer_pass, "get_concrete_function")
    assert hasattr(functions._input_gradients, "get_concrete_function")
    x = RNG.random((5, 32, 32, 3), dtype=np.float32)
    slots = np.array([[0, 2], [1, 1], [2, 0], [0, 1], [1, 2]], np.int32)
    acts, grads = functions.layer_pass(x, slots)

    assert head.feeder is None  # the model ends in logits: the scores are its outputs
    expected_acts = keras.Model(residual_model.inputs, residual_model.get_layer(layer).output)(x, training=False)
    after = keras.Model(residual_model.get_layer("res_relu").input, residual_model.output)  # the layer on
    for t in range(slots.shape[1]):
        with tf.GradientTape() as tape:
            tape.watch(expected_acts)
            total = tf.reduce_sum(tf.gather(after(expected_acts, training=False), slots[:, t], batch_dims=1))
        expected = tape.gradient(total, expected_acts).numpy()
        np.testing.assert_allclose(grads[:, t], expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max()))
    np.testing.assert_allclose(acts, expected_acts.numpy(), rtol=1e-5, atol=1e-6)

    with input_tape(tf.constant(x)) as tape:
        residual_model(x, training=False)
    assert tape.watched_variables() == ()


def test_curve_batches_fit_the_activations():
    """The curves' forward passes take as many images as three of the largest layer outputs fit in the budget: a
    small CNN's hundreds at once, VGG16's first block no more than the other passes' 4 x batch."""
    small = {"input": (None, 64, 64, 3), "c1": (None, 64, 64, 16), "p1": (None, 32, 32, 16), "out": (None, 4)}
    vgg = {"block1_conv1": (None, 224, 224, 64), "fc": (None, 4096)}
    assert curve_batch_size(small, 16) == CURVE_BATCH_LIMIT
    assert curve_batch_size(vgg, 16) == 64
    assert curve_batch_size({"wide": (None, 128, 128, 32)}, 16) == 170  # 1 GiB over 3 x 2 MiB
    assert curve_batch_size({"odd": ((None, 8), (None, 9))}, 16) == CURVE_BATCH_LIMIT  # a multi-output layer
