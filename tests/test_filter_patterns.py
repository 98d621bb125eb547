"""Filter patterns: ascent drives filters up, descent down, each pattern is its own filter's, results are seeded,
patterns are real images, dead filters are marked, and the sections and report.json lists are complete."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest

from reportgen.api import generate_report
from reportgen.config import ReportOptions
from reportgen.errors import InputError
from reportgen.example import example_model_path
from reportgen.graph import traceable
from reportgen.layer_kinds import PATTERN_TYPES
from reportgen.loading.preprocess import Preprocessor
from reportgen.sections.filter_patterns import DEAD_GREY
from reportgen.techniques import filter_patterns as fp
from reportgen.techniques.filter_patterns import (
    PatternSettings,
    choose_filters,
    filter_responses,
    pattern_size,
    search_patterns,
)
from reportgen.techniques.filter_patterns import schedule as fp_schedule
from reportgen.techniques.filter_patterns import search as fp_search
from reportgen.techniques.filter_patterns import sizing as fp_sizing
from reportgen.techniques.pattern_params import PixelMap

SCALE = PixelMap.from_preprocessor(Preprocessor("scale"))


@pytest.fixture(scope="module")
def example_model(keras):
    return keras.models.load_model(example_model_path())


@pytest.fixture(scope="module")
def example_patterns(example_model):
    """A report's defaults (projected, 20 steps, the model's 64 px, 16 filters, bfloat16 steps where the CPU has
    them) on every conv layer of the example model."""
    dtype = "bfloat16" if fp_sizing.fast_bfloat16() else "float32"
    settings = PatternSettings(height=64, width=64, compute_dtype=dtype)
    return {layer: search_patterns(example_model, layer, tuple(range(16)), settings, SCALE)
            for layer in ("conv1", "conv2", "conv3")}


def test_first_layer_patterns_beat_random_images(example_model, example_patterns):
    """conv1 is linear in the pixels: its grey starting image already drives it half way, so 5x is out of reach;
    the search must still find far better images than chance does."""
    result = example_patterns["conv1"]
    ascent = result.direction("ascent").activation
    random_images = np.random.default_rng(0).random((64, 64, 64, 3), dtype=np.float32)
    best_random = filter_responses(example_model, "conv1", random_images, result.filters).max(axis=0)
    assert np.all(ascent > result.start_activation) and np.all(ascent > result.direction("descent").activation)
    assert np.mean(ascent > best_random) >= 0.9


def test_ascent_reaches_well_above_its_start_and_descent_ends_below(example_patterns):
    """The start is the tutorials' grey plus 20% noise, which already drives some of conv2's filters (the lowest
    ratio is 2.6x there, 28x on conv3; 5x held from the earlier, nearly flat start)."""
    for layer, result in example_patterns.items():
        if layer == "conv1":
            continue  # see test_first_layer_patterns_beat_random_images
        ascent, descent = result.direction("ascent"), result.direction("descent")
        live = ~result.dead
        assert live.sum() >= len(result.filters) - 1, result.layer
        assert np.all(ascent.activation[live] > 0)
        assert np.all(ascent.activation[live] >= 2.5 * result.start_activation[live]), (
            result.layer, ascent.activation / np.maximum(result.start_activation, 1e-9))
        # Descent ends below its start. Behind a ReLU the output cannot go below zero, so a filter already off on
        # the starting image shows it in its pre-activation, which the search follows while the output is zero.
        on = result.start_activation > 1e-6
        assert on.sum() >= len(result.filters) // 2
        assert np.all(descent.activation[on] < result.start_activation[on])
        assert np.all(descent.activation[~on] <= 1e-3 * ascent.activation.max())  # still (practically) off
        assert np.all(descent.pre_activation[~on] < result.start_pre_activation[~on])
        assert np.all(ascent.pre_activation > descent.pre_activation)


def test_each_pattern_drives_its_own_filter_harder_than_the_others_do(example_model, example_patterns):
    for layer, result in example_patterns.items():
        ascent = result.direction("ascent")
        responses = filter_responses(example_model, layer, ascent.inputs, result.filters)  # (pattern, filter)
        # The stored activation is the model's own output on the stored input, not a number from the search.
        np.testing.assert_allclose(np.diag(responses), ascent.activation, rtol=1e-4, atol=1e-5)
        count = len(result.filters)
        others = (responses.sum(axis=0) - np.diag(responses)) / (count - 1)
        # conv2's high-contrast stripes drive several of its filters (0.69 of them beat the others' mean there,
        # every one on conv3); the scorecard flags each unspecific pattern.
        assert np.mean(np.diag(responses) > others) >= 0.65, layer


def test_patterns_are_real_images_in_every_preprocessing(example_patterns, plain_model):
    for result in example_patterns.values():
        for patterns in result.patterns:
            assert patterns.inputs.dtype == np.float32 and patterns.inputs.shape == (len(result.filters), 64, 64, 3)
            assert patterns.inputs.min() >= 0.0 and patterns.inputs.max() <= 1.0
    for mode in ("caffe", "tf", "torch", "none"):
        preprocessor = Preprocessor(mode)
        pixel_map = PixelMap.from_preprocessor(preprocessor)
        unit = np.random.default_rng(0).random((2, 5, 5, 3)).astype(np.float32)
        np.testing.assert_allclose(pixel_map.to_model(unit).numpy(), preprocessor.apply(unit * 255), rtol=1e-5,
                                   atol=1e-4)
        for method in ("projected", "logit", "fourier", "pixel", "maco"):
            result = search_patterns(plain_model, "conv1", (0, 1), PatternSettings(
                steps=8, height=32, width=32, method=method, directions=("ascent",)), pixel_map)
            low, high = preprocessor.valid_range()
            x = result.direction("ascent").inputs
            tolerance = 1e-4 * float(np.max(high - low))
            assert np.all(x >= low - tolerance) and np.all(x <= high + tolerance), (mode, method)


@pytest.mark.parametrize("method", ["projected", "logit", "fourier", "pixel", "maco"])
def test_same_seed_gives_identical_arrays(example_model, method):
    def run(seed: int) -> list[np.ndarray]:
        settings = PatternSettings(steps=6, height=64, width=64, method=method, seed=seed)
        return [p.inputs for p in search_patterns(example_model, "conv2", (1, 4, 7), settings, SCALE).patterns]

    first, again, other = run(3), run(3), run(4)
    for a, b, c in zip(first, again, other, strict=True):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_step_is_traced_once_per_layer_whatever_the_batches(example_model, monkeypatch):
    calls = []
    real = fp_search.run_layers
    monkeypatch.setattr(fp_search, "run_layers", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    monkeypatch.setattr(fp_search, "BATCH_PIXELS", 3 * 64 * 64)  # 10 patterns in batches of 3, 3, 2 and 2: two sizes
    search_patterns(example_model, "conv2", (0, 1, 2, 3, 5), PatternSettings(steps=4, height=64, width=64), SCALE)
    assert len(calls) == 2  # one trace of the step, one of the float32 evaluation


def test_layers_searched_together_get_the_patterns_they_get_alone(example_model):
    """One search of the first conv layer (projected onto the valid range only) and the next (with the saturation
    budget), with a filter only the deeper layer has: each layer's patterns, activations, starts and dead flags are
    those of its own search (the rows are independent; the default method has no shared random draws)."""
    from reportgen.techniques.filter_patterns import PatternJob, search_layers

    settings = PatternSettings(steps=6, height=32, width=32)
    jobs = [PatternJob("conv1", (0, 3, 5)), PatternJob("conv2", (1, 20))]  # conv1 has 16 channels
    together = search_layers(example_model, jobs, settings, SCALE)
    assert [r.layer for r in together] == ["conv1", "conv2"]
    for job, merged in zip(jobs, together, strict=True):
        alone = search_patterns(example_model, job.layer, job.filters, settings, SCALE)
        assert merged.filters == alone.filters and merged.target == alone.target
        for direction in settings.directions:
            a, b = merged.direction(direction), alone.direction(direction)
            np.testing.assert_allclose(a.inputs, b.inputs, atol=1e-5)
            np.testing.assert_allclose(a.activation, b.activation, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(a.responses, b.responses, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(merged.start_activation, alone.start_activation, rtol=1e-5)
        np.testing.assert_array_equal(merged.dead, alone.dead)
    # The first layer's patterns are unbudgeted (many values at the ends), the second's within the 10% budget.
    ends = [np.mean((r.direction("ascent").inputs <= 0.01) | (r.direction("ascent").inputs >= 0.99))
            for r in together]
    assert ends[0] > 0.2 and ends[1] <= 0.1
    # Scored together (one pass over both layers' views), each layer's scorecards are those it gets alone.
    displays = [{d.direction: d.inputs for d in r.patterns} for r in together]  # scale: inputs are the pixels
    for shared, result, shown in zip(fp.score_layers(example_model, together, displays), together, displays,
                                     strict=True):
        alone = fp.score_layer(example_model, result, shown)
        for direction, card in alone.items():
            for name in ("activation", "robust", "specificity", "saturation"):
                np.testing.assert_allclose(getattr(shared[direction], name), getattr(card, name), rtol=1e-4,
                                           atol=1e-6, err_msg=f"{result.layer} {direction} {name}")
            assert shared[direction].two_level == card.two_level == (result.layer == "conv1")


def test_layers_on_one_canvas_share_a_search_while_it_costs_little():
    """Worked by hand, in GFLOP against the 30 allowed: a and b share 32 px; running a's 10 patterns to b adds
    10 x (3.0 - 0.6) = 24. With c (also 32 px) all of them would run to c: 10 x 3.6 + 10 x 1.2 = 48, so c is
    searched on its own. d has another canvas; e shares d's, but 4 x (21 - 6) = 60 is too much."""
    from reportgen.techniques.filter_patterns.schedule import SHARED_SEARCH_FLOPS, shared_searches

    assert SHARED_SEARCH_FLOPS == 30e9
    canvases = {"a": (32, 32), "b": (32, 32), "c": (32, 32), "d": (48, 48), "e": (48, 48)}
    flops = {"a": 0.6e9, "b": 3.0e9, "c": 4.2e9, "d": 6e9, "e": 21e9}
    patterns = {"a": 10, "b": 10, "c": 10, "d": 4, "e": 4}
    assert shared_searches(list(canvases), canvases, flops, patterns) == [["a", "b"], ["c"], ["d"], ["e"]]
    flops["e"] = 9e9  # 4 x 3 = 12
    assert shared_searches(list(canvases), canvases, flops, patterns) == [["a", "b"], ["c"], ["d", "e"]]


def _model_with_dead_filter(keras):
    """The residual fixture model (Conv2D, SeparableConv2D, DepthwiseConv2D) with stem filter 0 unable to fire:
    negative weights and bias on inputs in [0, 1] keep its pre-activation below zero, so ReLU gives 0."""
    from conftest import build_residual_model

    model = build_residual_model(keras, seed=5)
    stem = model.get_layer("stem")
    kernel, bias = stem.kernel.numpy(), stem.bias.numpy()
    kernel[..., 0] = -np.abs(kernel[..., 0]) - 0.01
    bias[0] = -1.0
    stem.kernel.assign(kernel)
    stem.bias.assign(bias)
    return model


def test_report_sections_manifest_arrays_and_dead_tiles(keras, shared_images, tmp_path, monkeypatch):

    def measured(*args, **kwargs):
        raise AssertionError("a search of a few MFLOP measured the machine's matmul rate for its estimate")

    monkeypatch.setattr(fp_schedule, "matmul_rate", measured)
    model = _model_with_dead_filter(keras)
    out = tmp_path / "report"
    options = ReportOptions(sections=("summary", "filter_patterns"), filters=3, steps=8, save_arrays=True)
    result = generate_report(model, [shared_images], out, options)
    manifest = json.loads((out / "report.json").read_text())
    arrays = np.load(out / "arrays.npz")

    layer_sections = [s for s in manifest["sections"] if s["kind"] == "filter_patterns" and s.get("layer")]
    assert [s["layer"] for s in layer_sections] == ["stem", "res_conv", "sep", "dw"]
    # The summary table links every layer that has patterns to them, and no other layer.
    html = result.index_html.read_text()
    summary = html[html.index('id="summary"'):html.index("</section>", html.index('id="summary"'))]
    links = set(re.findall(r'<a href="(#[^"]+)">patterns</a>', summary))
    assert {"#" + s["id"] for s in layer_sections} == links

    entries = manifest["filter_patterns"]
    assert len(entries) == 4 * 3 * 2
    assert set(entries[0]) >= {"layer", "filter", "direction", "activation", "start_activation", "array_key",
                               "dead"}
    for entry in entries:
        stored = arrays[entry["array_key"]]
        assert stored.shape == (3, 32, 32, 3)
        x = stored[entry["array_index"]: entry["array_index"] + 1]
        again = filter_responses(model, entry["target"], x, [entry["filter"]])[0, 0]
        assert again == pytest.approx(entry["activation"], rel=1e-4, abs=1e-5)
    dead = {(e["layer"], e["filter"]) for e in entries if e["dead"]}
    assert dead == {("stem", 0)}
    assert any("dead" in w and "stem 1/3" in w for w in manifest["warnings"])

    grid = cv2.imread(str(out / "figures" / f"{layer_sections[0]['id']}-ascent.png"))[:, :, ::-1]
    tile = grid[4:4 + 128, 4:4 + 128]  # filter 0: 32 px patterns drawn 4x, after a 4 px margin
    assert np.all(tile == DEAD_GREY)
    assert grid[4:132, 136:264].std() > 5  # filter 1 is a live pattern


def test_nested_layers_and_names_that_cannot_be_traced(keras, nested_model):
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv 1 <b>")(inputs)
    odd = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    assert not traceable(odd)
    for model, layer in ((nested_model, "conv_base/block2_conv1"), (odd, "conv 1 <b>")):
        settings = PatternSettings(steps=10, height=23, width=25, directions=("ascent",))  # odd sizes too
        result = search_patterns(model, layer, (0, 1), settings, SCALE)
        ascent = result.direction("ascent")
        assert ascent.inputs.shape == (2, 23, 25, 3)
        np.testing.assert_allclose(np.diag(filter_responses(model, layer, ascent.inputs, (0, 1))),
                                   ascent.activation, rtol=1e-4, atol=1e-5)
        assert np.all(ascent.pre_activation > result.start_pre_activation)


def test_filter_choice_and_pattern_size():
    assert choose_filters(64, 16, None, "conv") == tuple(range(16))
    assert choose_filters(8, 16, None, "conv") == tuple(range(8))
    assert choose_filters(8, 16, (5, 2, 5), "conv") == (5, 2)
    with pytest.raises(InputError, match=r"--filter-indices.*9.*conv2"):
        choose_filters(8, 16, (1, 9), "conv2")
    assert pattern_size((64, 64, 3), None) == (64, 64)
    assert pattern_size((None, None, 3), None) == (128, 128)
    assert pattern_size((224, 224, 3), 96) == (96, 96)
    assert pattern_size((224, 224, 3), None) == (128, 128)  # textures: a larger canvas only repeats them
    assert pattern_size((160, 320, 3), None) == (64, 128)  # aspect kept


@pytest.mark.parametrize(("reshape", "expected", "layer"), [(False, [128, 128], [32, 32]),
                                                             (True, [144, 144], [144, 144])])
def test_default_pattern_size_falls_back_to_the_models_own_when_it_must(keras, shared_images, tmp_path, reshape,
                                                                         expected, layer):
    """The canvas is at most 128 px, and each layer's is twice its receptive field (3 px here), at least 32 px;
    both stay the model's own size where it needs that."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((144, 144, 3))
    # A Reshape before the convolution pins the input size; plain convolutions take any.
    x = keras.layers.Reshape((72, 288, 3))(inputs) if reshape else inputs
    x = keras.layers.Conv2D(2, 3, strides=4, activation="relu", name="conv")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    out = tmp_path / "out"
    generate_report(model, [shared_images], out, ReportOptions(sections=("filter_patterns",), steps=2, filters=1,
                                                               directions=("ascent",), save_arrays=True))
    manifest = json.loads((out / "report.json").read_text())
    assert manifest["sections"][0]["data"]["size"] == expected
    assert manifest["sections"][1]["data"]["size"] == layer
    with np.load(out / "arrays.npz") as arrays:
        assert arrays[manifest["filter_patterns"][0]["array_key"]].shape[1:3] == tuple(layer)


def test_cli_rejects_out_of_range_filter_indices(cli, saved_models, shared_images, tmp_path):
    result = cli("generate", saved_models["plain"], shared_images, "-o", tmp_path / "out", "--sections",
                 "filter_patterns", "--filter-indices", "0,12")
    assert result.exit_code == 2
    assert "--filter-indices" in result.output and "conv1" in result.output


def test_an_estimate_comes_before_the_search_and_progress_before_each_search(plain_model, shared_images, tmp_path):
    """Both conv layers have 32 px canvases and little arithmetic: one search, named by its layers, whose steps
    are counted."""
    import io

    from reportgen.progress import Progress

    stream = io.StringIO()
    generate_report(plain_model, [shared_images], tmp_path / "out",
                    ReportOptions(sections=("filter_patterns",), steps=3, filters=2), progress=Progress(stream=stream))
    lines = [line.split("] ", 1)[1] for line in stream.getvalue().splitlines() if "filter_patterns:" in line]
    assert re.fullmatch(r"filter_patterns: 2 layers, 8 patterns of 32x32 px, 3 steps \(projected, \w+\); about "
                        r"\d+ s", lines[1]), lines
    assert re.fullmatch(r"filter_patterns: conv1, conv2 \(1/1\), about \d+ s left", lines[2]), lines
    # Then the search's own steps: a line at its first step (then every 5 s) and one when it ends.
    assert re.fullmatch(r"filter_patterns: conv1, conv2: \[#*-*\] 1/3 steps, .*", lines[3]), lines
    assert re.fullmatch(r"filter_patterns: conv1, conv2: 3/3 steps, .*", lines[-1]), lines


def test_bfloat16_steps_only_where_they_pay(keras, example_model, monkeypatch):
    from reportgen.graph import layer_output_shapes, walk_layers

    def choice(model, size):
        nodes = walk_layers(model)
        shapes = layer_output_shapes(model, (size, size, 3))
        return fp.search_dtype(nodes, shapes, [n.path for n in nodes if isinstance(n.layer, PATTERN_TYPES)])

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 1, name="stem")(inputs)
    for i in range(4):  # MobileNet's pattern: depthwise, batch norm, ReLU, 1x1: little arithmetic per element
        x = keras.layers.DepthwiseConv2D(3, padding="same", name=f"dw{i}")(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
        x = keras.layers.Conv2D(16, 1, name=f"pw{i}")(x)
    mobile = keras.Model(inputs, x)
    monkeypatch.setattr(fp_sizing, "fast_bfloat16", lambda: True)
    assert choice(example_model, 64) == "bfloat16"  # 3x3 and 5x5 convolutions over many channels
    assert choice(mobile, 32) == "float32"
    monkeypatch.setattr(fp_sizing, "fast_bfloat16", lambda: False)
    assert choice(example_model, 64) == "float32"  # no native bfloat16: never


# --- Block outputs, the default against the tutorials' loop, the scorecard, diversity, greyscale ------------------

TUTORIAL_STEPS = 40
MARGIN = 0.01  # the scorecard's saturation: pixel values within 1% of the range's ends


@pytest.fixture(scope="module")
def trained(keras):
    """The RGB conv -> BN -> ReLU CNN and the greyscale mini-Xception of tests/pattern_models.py, trained for a
    few seconds each."""
    from pattern_models import train_model

    return {kind: train_model(keras, kind)[0] for kind in ("rgb", "grey")}


def _pixel_map(channels: int) -> PixelMap:
    return PixelMap.from_preprocessor(Preprocessor("scale", channels))


def _saturation(unit: np.ndarray) -> np.ndarray:
    """(N, ...) pixels in [0, 1] -> (N,) share of values within MARGIN of 0 or 1, computed here from scratch."""
    flat = unit.reshape(len(unit), -1)
    return ((flat <= MARGIN) | (flat >= 1 - MARGIN)).sum(axis=1) / flat.shape[1]


def test_conv_bn_relu_patterns_drive_the_block_output_and_are_not_flat_fields(keras, trained, residual_model):
    from reportgen.techniques.filter_patterns import pattern_targets

    targets = {t.layer: t for t in pattern_targets(trained["rgb"], ["b1_conv", "b2_conv", "b3_conv"])}
    assert targets["b2_conv"].output == "b2_relu" and targets["b2_conv"].chain == ("b2_bn", "b2_relu")
    grey = {t.layer: t for t in pattern_targets(trained["grey"], ["m1a_conv", "m1b_conv", "class_conv"])}
    assert grey["m1a_conv"].output == "m1a_relu"  # a separable conv's block
    assert grey["m1b_conv"].linear and grey["class_conv"].linear  # no non-linearity follows: said so, not hidden
    assert pattern_targets(residual_model, ["res_conv"])[0].output == "res_relu"  # through the residual add
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.SeparableConv2D(4, 3, name="sep")(inputs)  # linear, then a conv with its own ReLU
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    chained = pattern_targets(keras.Model(inputs, x), ["sep", "conv"])
    assert [(t.output, t.linear) for t in chained] == [("sep", True), ("conv", False)]  # never another conv

    model = trained["rgb"]
    for layer in ("b2_conv", "b3_conv"):  # past the first layer, whose best image may be a colour field
        result = search_patterns(model, layer, tuple(range(6)), PatternSettings(
            height=32, width=32, directions=("ascent",)), _pixel_map(3))
        x = result.direction("ascent").inputs
        # The stored activation is the block output's (after BN and ReLU), as the model computes it.
        np.testing.assert_allclose(np.diag(filter_responses(model, targets[layer].output, x, range(6))),
                                   result.direction("ascent").activation, rtol=1e-4, atol=1e-5)
        assert np.all(_saturation(x) <= 0.10), layer
        # Not a flat field: every tile varies across space (a flat field's spatial std is 0).
        assert np.all(x.std(axis=(1, 2)).max(axis=1) > 0.15), layer


def _tutorial(model, layer, filters, channels, steps=TUTORIAL_STEPS):
    """The tutorials' loop as the issue states it, written out here: from 0.5 + U(-0.1, 0.1), x += 0.05 * g / rms(g)
    on the mean of the filter's channel of the block output, clipped to [0, 1] only at the end."""
    import tensorflow as tf

    output = fp.pattern_targets(model, [layer])[0].output
    rng = np.random.default_rng(0)
    x = tf.Variable(0.4 + 0.2 * rng.random((len(filters), 32, 32, channels)).astype(np.float32))
    index = tf.constant(filters)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = fp_search.run_layers(model, x, [output], stop_early=True).captured[output]
            loss = tf.reduce_sum(tf.gather(tf.reduce_mean(out, axis=[1, 2]), index, axis=1, batch_dims=1))
        g = tape.gradient(loss, x)
        x.assign_add(0.05 * g / (tf.sqrt(tf.reduce_mean(g * g, axis=[1, 2, 3], keepdims=True)) + 1e-5))

    for _ in range(steps):
        step()
    return np.clip(x.numpy(), 0.0, 1.0), output


@pytest.mark.parametrize(("kind", "layers"), [("rgb", ("b1_conv", "b2_conv", "b3_conv")),
                                            ("grey", ("stem_conv", "m1a_conv", "m2_conv"))])
def test_default_search_beats_the_tutorials_loop_on_trained_models(trained, kind, layers):
    """At 40 steps on models the tests train, every layer: the default drives the filters harder on average than
    the tutorials' loop, whose patterns pin most pixels at the range's ends, while past the first conv layer (whose
    best image is two-level) it keeps at most 10% of each pattern's values within 1% of the ends."""
    model = trained[kind]
    channels = int(model.inputs[0].shape[-1])
    filters = tuple(range(6))
    for layer in layers:
        reference, output = _tutorial(model, layer, list(filters), channels)
        tutorial = filter_responses(model, output, reference, filters).diagonal()
        settings = PatternSettings(steps=TUTORIAL_STEPS, height=32, width=32, directions=("ascent",))
        default = search_patterns(model, layer, filters, settings, _pixel_map(channels)).direction("ascent")
        assert default.activation.mean() > tutorial.mean(), (layer, default.activation.mean(), tutorial.mean())
        assert np.mean(_saturation(reference)) > 0.3
        if layer != fp.first_conv(fp_search.walk_layers(model)):
            assert np.all(_saturation(default.inputs) <= 0.10), layer
        else:  # two-level: every value at an end of the range
            assert np.mean(_saturation(default.inputs)) > 0.9


def test_greyscale_patterns_are_not_saturated(trained):
    model = trained["grey"]
    for layer in ("m1a_conv", "m2_conv"):  # past the first conv layer, whose best image is two-level
        result = search_patterns(model, layer, tuple(range(6)), PatternSettings(height=32, width=32),
                                 _pixel_map(1))
        for patterns in result.patterns:
            assert patterns.inputs.shape[3] == 1
            assert np.all(_saturation(patterns.inputs) <= 0.10), (layer, patterns.direction)
            # Not flat either: a flat field has no spread, the search's start (grey plus 20 levels of noise) 0.02, a
            # pattern 0.09-0.32 whichever kernels round its steps (oneDNN's or TensorFlow's own).
            assert np.all(patterns.inputs.std(axis=(1, 2, 3)) > 0.05), (layer, patterns.direction)


def test_scorecard_in_report_json_recomputed_from_the_stored_patterns(keras, trained, tmp_path):
    """Every number of every pattern's scorecard, recomputed from arrays.npz: saturation from the pixels, robust
    activation with OpenCV's own warps of the fixed views, specificity from the model's responses."""
    from reportgen.techniques.filter_patterns import ROBUST_VIEWS, view_transform

    # The views are what they say: a pure shift of 1/16 of the width, a rotation about the centre.
    shift = view_transform((0.0, 1.0, 0.0625, 0.0), 32, 32)
    np.testing.assert_allclose(shift, [[1, 0, 2], [0, 1, 0]], atol=1e-12)
    rotation = view_transform((5.0, 1.0, 0.0, 0.0), 32, 32)
    np.testing.assert_allclose(rotation @ [15.5, 15.5, 1.0], [15.5, 15.5], atol=1e-9)
    assert np.linalg.det(rotation[:, :2]) == pytest.approx(1.0)

    model = trained["rgb"]
    images = tmp_path / "images"
    from conftest import write_images

    write_images(images, size=(32, 32))
    out = tmp_path / "report"
    generate_report(model, [images], out, ReportOptions(sections=("filter_patterns",), filters=4, steps=10,
                                                        save_arrays=True, layers=("b2_conv", "b3_conv")))
    manifest = json.loads((out / "report.json").read_text())
    arrays = np.load(out / "arrays.npz")
    entries = manifest["filter_patterns"]
    assert {e["target"] for e in entries} == {"b2_relu", "b3_relu"}
    for (_layer, direction), group in _groups(entries).items():
        stored = arrays[group[0]["array_key"]]
        output = group[0]["target"]
        filters = [e["filter"] for e in group]
        responses = filter_responses(model, output, stored, filters)
        for i, entry in enumerate(group):
            scores = entry["scores"]
            x = stored[entry["array_index"]]
            assert scores["saturation"] == pytest.approx(float(_saturation(x[None])[0]), abs=1e-9)
            assert scores["activation"] == pytest.approx(float(responses[i, i]), rel=1e-4, abs=1e-6)
            warped = np.stack([cv2.warpAffine(x, view_transform(view, 32, 32), (32, 32),
                                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                              borderMode=cv2.BORDER_REFLECT) for view in ROBUST_VIEWS])
            viewed = float(filter_responses(model, output, warped, [entry["filter"]])[:, 0].mean())
            activation, start = float(responses[i, i]), entry["start_activation"]
            gain, scale = activation - start, max(abs(activation), abs(start))
            # The views' responses come from the search's arithmetic (bfloat16 where the CPU has it: 8 mantissa
            # bits) and from TensorFlow's bilinear warp where this uses OpenCV's (fixed-point weights, 1/32 px):
            # about 2**-7 of the largest activation, and the share's error is that over the gain.
            error = (2.0 ** -7 * max(scale, abs(viewed)) + 1e-6) / max(abs(gain), 1e-12)
            if abs(gain) <= 0.01 * scale * (1 - 1e-3):
                assert scores["robust"] is None  # no gain to keep
            elif abs(gain) > 0.01 * scale * (1 + 1e-3):
                expected = min(1.0, max(0.0, (viewed - start) / gain))  # the share kept, clipped
                assert scores["robust"] is not None and 0.0 <= scores["robust"] <= 1.0
                assert scores["robust"] == pytest.approx(expected, abs=error + 0.02)
            others = [responses[j, i] for j in range(len(group)) if j != i]
            below = [o < responses[i, i] if direction == "ascent" else o > responses[i, i] for o in others]
            assert scores["specificity"] == pytest.approx(sum(below) / len(below))
            fragile = scores["robust"] is not None and scores["robust"] < 0.5  # the stored share decides
            expected_flags = {"fragile"} if direction == "ascent" and fragile else set()
            expected_flags |= {"unspecific"} if direction == "ascent" and scores["specificity"] < 0.5 else set()
            expected_flags |= {"saturated"} if scores["saturation"] > 0.1 else set()
            assert set(scores["flags"]) == expected_flags
    html = (out / "index.html").read_text()
    assert "These patterns drive b2_relu (b2_conv → b2_bn → b2_relu)" in html
    assert "Robust" in html and "Saturated" in html


def _groups(entries):
    groups: dict = {}
    for entry in entries:
        groups.setdefault((entry["layer"], entry["direction"]), []).append(entry)
    return groups


def test_diversity_gives_different_patterns_of_one_filter(trained, monkeypatch):
    model = trained["rgb"]
    settings = PatternSettings(height=32, width=32, directions=("ascent",), diversity=3)

    def run():
        result = search_patterns(model, "b3_conv", (0, 1), settings, _pixel_map(3))
        assert result.direction("ascent").inputs.shape == (6, 32, 32, 3)
        return result

    def style_similarity(result):
        """Mean cosine similarity of the Gram matrices of b3_relu between the patterns of each filter."""
        x = result.direction("ascent").inputs
        features = fp_search.run_layers(model, x, ["b3_relu"], stop_early=True).captured["b3_relu"].numpy()
        flat = features.reshape(len(x), -1, features.shape[-1])
        grams = np.einsum("bnc,bnd->bcd", flat, flat).reshape(len(x), -1)
        grams /= np.linalg.norm(grams, axis=1, keepdims=True)
        sims = [grams[f * 3 + a] @ grams[f * 3 + b] for f in range(2) for a in range(3) for b in range(a + 1, 3)]
        return float(np.mean(sims))

    diverse = run()
    x = diverse.direction("ascent").inputs
    for f in range(2):
        for a in range(3):
            for b in range(a + 1, 3):
                assert np.abs(x[f * 3 + a] - x[f * 3 + b]).mean() > 0.1  # different images
    assert np.all(diverse.direction("ascent").activation > diverse.start_activation.repeat(3))  # still driven
    monkeypatch.setattr(fp_search, "DIVERSITY_WEIGHT", 0.0)
    assert style_similarity(diverse) < style_similarity(run())  # the penalty pushes them apart


def test_layers_chooses_pattern_layers(residual_model, shared_images, tmp_path):
    out = tmp_path / "report"
    generate_report(residual_model, [shared_images], out, ReportOptions(
        sections=("filter_patterns",), filters=2, steps=3, layers=("res_conv", "res_relu", "pool")))
    manifest = json.loads((out / "report.json").read_text())
    sections = {s["layer"]: s["data"] for s in manifest["sections"] if s.get("layer")}
    # res_conv and res_relu drive the same output: shown once; a pooling layer drives its own.
    assert sections.keys() == {"res_conv", "pool"}
    assert sections["res_conv"]["target"] == "res_relu" and sections["pool"]["target"] == "pool"
    with pytest.raises(InputError, match="--layers"):
        generate_report(residual_model, [shared_images], tmp_path / "other", ReportOptions(
            sections=("filter_patterns",), layers=("nothing_like_this",)))


def test_deep_networks_get_one_pattern_layer_per_stage(keras):
    from reportgen.graph import layer_output_shapes, walk_layers
    from reportgen.techniques.filter_patterns.targets import ALL_LAYERS_UP_TO, one_per_stage

    inputs = keras.Input((32, 32, 3))
    x, convs = inputs, []
    for stage in range(3):  # VGG's layout: three convs, then pooling
        for k in range(3):
            x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=f"s{stage}_conv{k}")(x)
            convs.append(x)
        x = keras.layers.MaxPooling2D(name=f"s{stage}_pool")(x)
    model = keras.Model(inputs, x)
    paths = [n.path for n in walk_layers(model) if isinstance(n.layer, PATTERN_TYPES)]
    assert len(paths) > ALL_LAYERS_UP_TO
    chosen = one_per_stage(fp.pattern_targets(model, paths), layer_output_shapes(model, (32, 32, 3)))
    assert [t.layer for t in chosen] == ["s0_conv2", "s1_conv2", "s2_conv2"]  # the last before each pooling


def test_each_layer_canvas_is_twice_its_receptive_field_within_the_bounds(keras):
    """3x3 convs, stride 1, then a 2x2 pool: fields of 3, 5 and 10 px (the conv arithmetic, worked by hand)
    give canvases of 32 (the minimum), 32 and 32; a dilated conv seeing 21 px gets 48; and the canvas caps."""
    inputs = keras.Input((64, 64, 3))
    a = keras.layers.Conv2D(2, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(2, 3, padding="same", name="b")(a)
    p = keras.layers.MaxPooling2D(name="p")(b)
    c = keras.layers.Conv2D(2, 3, padding="same", name="c")(p)
    d = keras.layers.Conv2D(2, 3, padding="same", dilation_rate=3, name="d")(c)
    model = keras.Model(inputs, d)
    # d adds (3 - 1) * 3 cells of 2 px to c's 10 px: 22 px, of which the measured support is at least 21.
    sizes = fp.layer_sizes(model, ["a", "b", "c", "d"], (64, 64), 3)
    assert sizes["a"] == sizes["b"] == sizes["c"] == (32, 32)
    assert sizes["d"] == (48, 48)
    assert fp.layer_sizes(model, ["d"], (40, 40), 3)["d"] == (40, 40)  # never more than the canvas
    # Fields measured on a larger input (the model's, shared with the dataset examples) give the same canvases.
    from reportgen.techniques.dataset_examples import receptive_fields

    measured = receptive_fields(model, ["a", "b", "c", "d"], (96, 96, 3))
    assert fp.layer_sizes(model, ["a", "b", "c", "d"], (64, 64), 3, measured) == sizes
    assert fp.layer_sizes(model, ["d"], (40, 40), 3, measured)["d"] == (40, 40)


def test_patterns_and_dataset_examples_share_one_receptive_field_pass(plain_model, shared_images, tmp_path,
                                                                       monkeypatch):
    from reportgen.techniques import dataset_examples

    calls = []
    real = dataset_examples.receptive_fields
    monkeypatch.setattr(dataset_examples, "receptive_fields", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    result = generate_report(plain_model, [shared_images], tmp_path / "out", ReportOptions(
        sections=("filter_patterns", "dataset_examples"), steps=2, filters=2, examples=2))
    manifest = json.loads(result.manifest.read_text())
    assert {e["layer"] for e in manifest["dataset_examples"]} == {"conv1", "conv2"}
    assert calls == [["conv1", "conv2"]]
