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
    fast_bfloat16,
    filter_responses,
    pattern_size,
    search_patterns,
)
from reportgen.techniques.pattern_params import PixelMap

SCALE = PixelMap.from_preprocessor(Preprocessor("scale"))


@pytest.fixture(scope="module")
def example_model(keras):
    return keras.models.load_model(example_model_path())


@pytest.fixture(scope="module")
def example_patterns(example_model):
    """A report's defaults (logit, 20 steps, the model's 64 px, 16 filters, bfloat16 steps where the CPU has
    them) on every conv layer of the example model."""
    settings = PatternSettings(height=64, width=64, compute_dtype="bfloat16" if fast_bfloat16() else "float32")
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
        for method in ("logit", "fourier", "pixel", "maco"):
            result = search_patterns(plain_model, "conv1", (0, 1), PatternSettings(
                steps=8, height=32, width=32, method=method, directions=("ascent",)), pixel_map)
            low, high = preprocessor.valid_range()
            x = result.direction("ascent").inputs
            tolerance = 1e-4 * float(np.max(high - low))
            assert np.all(x >= low - tolerance) and np.all(x <= high + tolerance), (mode, method)


@pytest.mark.parametrize("method", ["logit", "fourier", "pixel", "maco"])
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
    real = fp.run_layers
    monkeypatch.setattr(fp, "run_layers", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    monkeypatch.setattr(fp, "BATCH_PIXELS", 3 * 64 * 64)  # 10 patterns in batches of 3, 3, 2 and 2: two sizes
    search_patterns(example_model, "conv2", (0, 1, 2, 3, 5), PatternSettings(steps=4, height=64, width=64), SCALE)
    assert len(calls) == 2  # one trace of the step, one of the float32 evaluation


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


def test_report_sections_manifest_arrays_and_dead_tiles(keras, shared_images, tmp_path):
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


@pytest.mark.parametrize(("reshape", "expected"), [(False, [128, 128]), (True, [144, 144])])
def test_default_pattern_size_falls_back_to_the_models_own_when_it_must(keras, shared_images, tmp_path, reshape,
                                                                         expected):
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
    with np.load(out / "arrays.npz") as arrays:
        assert arrays[manifest["filter_patterns"][0]["array_key"]].shape[1:3] == tuple(expected)


def test_cli_rejects_out_of_range_filter_indices(cli, saved_models, shared_images, tmp_path):
    result = cli("generate", saved_models["plain"], shared_images, "-o", tmp_path / "out", "--sections",
                 "filter_patterns", "--filter-indices", "0,12")
    assert result.exit_code == 2
    assert "--filter-indices" in result.output and "conv1" in result.output


def test_an_estimate_comes_before_the_search_and_progress_after_each_layer(plain_model, shared_images, tmp_path):
    import io

    from reportgen.progress import Progress

    stream = io.StringIO()
    generate_report(plain_model, [shared_images], tmp_path / "out",
                    ReportOptions(sections=("filter_patterns",), steps=3, filters=2), progress=Progress(stream=stream))
    lines = [line.split("] ", 1)[1] for line in stream.getvalue().splitlines() if "filter_patterns:" in line]
    assert re.fullmatch(r"filter_patterns: 2 layers, 8 patterns of 32x32 px, 3 steps \(logit, \w+\); about "
                        r"\d+ s", lines[1]), lines
    assert re.fullmatch(r"filter_patterns: conv1 \(1/2\), about \d+ s left", lines[2])
    assert re.fullmatch(r"filter_patterns: conv2 \(2/2\), about \d+ s left", lines[3])


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
    monkeypatch.setattr(fp, "fast_bfloat16", lambda: True)
    assert choice(example_model, 64) == "bfloat16"  # 3x3 and 5x5 convolutions over many channels
    assert choice(mobile, 32) == "float32"
    monkeypatch.setattr(fp, "fast_bfloat16", lambda: False)
    assert choice(example_model, 64) == "float32"  # no native bfloat16: never
