"""Weight statistics, the freshly initialised comparison, kernel grids and the weights sections."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reportgen.api import generate_report
from reportgen.config import ReportOptions
from reportgen.figures import kernel_grid
from reportgen.graph import walk_layers
from reportgen.techniques.weights import (
    STATS_CHUNK,
    compare_weights,
    fresh_copy,
    histogram,
    variable_values,
    weight_stats,
)


def test_weight_stats_match_numpy():
    values = np.array([-2.0, -0.001, 0.0, 0.5, 1.5, np.nan, np.inf], dtype=np.float32)
    stats = weight_stats(values)
    finite = values[np.isfinite(values)].astype(np.float64)
    assert stats.count == 7 and stats.non_finite == 2
    assert stats.mean == pytest.approx(finite.mean()) and stats.std == pytest.approx(finite.std())
    assert (stats.min, stats.max) == (-2.0, 1.5)
    assert stats.near_zero == pytest.approx(2 / 5)  # |w| < 1% of 2.0: -0.001 and 0.0


def test_chunked_stats_and_histogram_equal_numpy_over_the_whole_tensor():
    """Over several chunks, with non-finite values in some and a mean far from zero (where one-pass variance
    loses every digit): the same numbers numpy gives on the whole tensor at once."""
    rng = np.random.default_rng(4)
    values = (1000.0 + 0.01 * rng.standard_normal(3 * STATS_CHUNK + 17)).astype(np.float32)
    values[[5, STATS_CHUNK + 9]] = [np.nan, -np.inf]
    stats = weight_stats(values.reshape(-1, 1))
    finite = values[np.isfinite(values)].astype(np.float64)
    assert stats.non_finite == 2 and stats.count == values.size
    assert stats.mean == pytest.approx(finite.mean(), rel=1e-12)
    assert stats.std == pytest.approx(finite.std(), rel=1e-9)
    assert (stats.min, stats.max) == (finite.min(), finite.max())
    assert stats.near_zero == 0.0
    fresh = rng.standard_normal(2 * STATS_CHUNK).astype(np.float32) + 1000.0
    edges, trained_counts, fresh_counts = histogram(values, fresh)
    assert edges[0] == min(finite.min(), fresh.min()) and edges[-1] == max(finite.max(), fresh.max())
    np.testing.assert_array_equal(trained_counts, np.histogram(finite, bins=edges)[0])
    np.testing.assert_array_equal(fresh_counts, np.histogram(fresh, bins=edges)[0])


def test_variable_values_are_the_weights_as_float32(keras):
    """Read without a copy where TensorFlow shares its buffer: the same values as the variable's own numpy(), and
    float32 whatever the variable's dtype."""
    layer = keras.layers.Dense(5, dtype="float16")
    layer.build((None, 7))
    kernel = variable_values(layer.kernel)
    assert kernel.dtype == np.float32 and kernel.shape == (7, 5)
    np.testing.assert_array_equal(kernel, layer.kernel.numpy().astype(np.float32))
    dense = keras.layers.Dense(3)
    dense.build((None, 4))
    np.testing.assert_array_equal(variable_values(dense.kernel), dense.kernel.numpy())


def test_fresh_copy_has_same_architecture_new_weights_and_is_seeded(plain_model, nested_model):
    for model in (plain_model, nested_model):
        fresh = fresh_copy(model, seed=1)
        assert [n.path for n in walk_layers(fresh)] == [n.path for n in walk_layers(model)]
        again = fresh_copy(model, seed=1)
        for a, b, trained in zip(fresh.weights, again.weights, model.weights, strict=True):
            np.testing.assert_array_equal(a, b)
            if len(a.shape) == 4:
                assert not np.allclose(a, trained)


def test_training_shows_up_as_change(keras, plain_model):
    """Shift one kernel: its relative change is large, an untouched copy's is what re-initialising gives."""
    trained = keras.models.clone_model(plain_model)
    trained.set_weights(plain_model.get_weights())
    conv = trained.get_layer("conv1")
    conv.kernel.assign(conv.kernel * 5.0)
    comparisons = {(c.layer, c.tensor): c for c in compare_weights(walk_layers(trained),
                                                                   walk_layers(fresh_copy(trained, 0)))}
    assert set(comparisons) == {("conv1", "kernel"), ("conv2", "kernel"), ("predictions", "kernel")}
    conv1 = comparisons[("conv1", "kernel")]
    assert conv1.trained.stats.std == pytest.approx(5 * conv1.fresh.stats.std, rel=0.3)
    assert conv1.change > 3
    assert conv1.trained_counts.sum() == conv1.trained.values.size


def test_kernel_grid_colour_first_layer_and_per_channel_later_layers(plain_model):
    kernel = plain_model.get_layer("conv1").kernel.numpy()  # (3, 3, 3, 8)
    pixels, caption = kernel_grid(kernel)
    assert "colour" in caption and pixels.dtype == np.uint8
    # the strongest positive weight of the layer is drawn at full intensity
    i = np.unravel_index(np.argmax(kernel), kernel.shape)
    assert pixels.max() == 255 and kernel[i] > 0
    kernel2 = plain_model.get_layer("conv2").kernel.numpy()  # (3, 3, 8, 16)
    _, caption2 = kernel_grid(kernel2)
    assert "per input channel" in caption2 or "one tile per input channel" in caption2
    big = np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)
    assert "mean over" in kernel_grid(big)[1]


def test_kernel_grid_tiles_are_the_kernels(plain_model):
    """Every filter gets a tile, and each weight is drawn as its own block of the tile, on the layer's scale."""
    from reportgen.figures import diverging

    kernel = plain_model.get_layer("conv1").kernel.numpy()  # (3, 3, 3, 8): colour tiles, 13 px per weight
    pixels, _ = kernel_grid(kernel)
    scale, zoom, pad = np.abs(kernel).max(), 13, 2
    expected = ((kernel / scale + 1.0) * 127.5).round()
    assert pixels.shape == (pad + 3 * zoom + pad, pad + 8 * (3 * zoom + pad), 3)
    for f in range(8):
        for a in range(3):
            for b in range(3):
                y, x = pad + a * zoom + zoom // 2, pad + f * (3 * zoom + pad) + b * zoom + zoom // 2
                np.testing.assert_allclose(pixels[y, x], expected[a, b, :, f], atol=1)

    kernel2 = plain_model.get_layer("conv2").kernel.numpy()  # (3, 3, 8, 16): a row per filter, a tile per input
    pixels2, _ = kernel_grid(kernel2)
    colours, zoom = diverging(kernel2 / np.abs(kernel2).max()), 8
    tile = 3 * zoom + pad
    assert pixels2.shape[:2] == (pad + 16 * tile, pad + 8 * tile)
    for f in (0, 7, 15):
        for c in (0, 5):
            for a, b in ((0, 0), (2, 1)):
                y, x = pad + f * tile + a * zoom + zoom // 2, pad + c * tile + b * zoom + zoom // 2
                np.testing.assert_array_equal(pixels2[y, x], colours[a, b, c, f])


def test_kernel_grid_of_a_grouped_conv_wraps_its_filters():
    """ConvNeXt's depthwise step is a Conv2D with one input channel per group, (7, 7, 1, 768): its filters share
    rows 16 tiles wide, in order, not one 17,666 px column (WebP refuses images over 16,383 px)."""
    from reportgen.figures import diverging

    kernel = np.random.default_rng(0).normal(size=(7, 7, 1, 768)).astype(np.float32)
    pixels, caption = kernel_grid(kernel)
    zoom, pad = 3, 2
    tile = 7 * zoom + pad
    assert pixels.shape[:2] == (pad + 48 * tile, pad + 16 * tile)
    assert "16 to a row" in caption
    colours = diverging(kernel / np.abs(kernel).max())
    for f in (0, 17, 767):
        row, column = divmod(f, 16)
        y, x = pad + row * tile + zoom // 2, pad + column * tile + zoom // 2
        np.testing.assert_array_equal(pixels[y, x], colours[0, 0, 0, f])


def test_weights_sections_cover_nested_separable_depthwise(residual_model, nested_model, shared_images, tmp_path):
    for model, expected in ((residual_model, {"stem", "res_conv", "sep", "dw", "logits"}),
                            (nested_model, {"conv_base/block1_conv1", "conv_base/block2_conv1", "head"})):
        out = tmp_path / model.name
        generate_report(model, [shared_images], out, ReportOptions(sections=("summary", "weights"),
                                                                   save_arrays=True))
        manifest = json.loads((out / "report.json").read_text())
        layers = {s["layer"] for s in manifest["sections"] if s["kind"] == "weights" and "layer" in s}
        assert layers == expected
        arrays = np.load(out / "arrays.npz")
        sep = next((s for s in manifest["sections"] if s.get("layer") == "sep"), None)
        if sep:
            assert [t["tensor"] for t in sep["data"]["tensors"]] == ["depthwise_kernel", "pointwise_kernel"]
            key = sep["data"]["tensors"][0]["array_keys"]["trained"]
            np.testing.assert_array_equal(arrays[key], model.get_layer("sep").depthwise_kernel.numpy())


def test_nan_weights_are_flagged_not_fatal(keras, plain_model, shared_images, tmp_path):
    broken = keras.models.clone_model(plain_model)
    broken.set_weights(plain_model.get_weights())
    kernel = broken.get_layer("conv2").kernel
    values = kernel.numpy()
    values[0, 0, 0, 0] = np.nan
    values[1, 1, 1, 1] = np.inf
    kernel.assign(values)
    out = tmp_path / "nan"
    result = generate_report(broken, [shared_images], out, ReportOptions(sections=("weights",)))
    assert any("NaN or Inf" in w and "conv2" in w for w in result.warnings)
    text = (out / "report.json").read_text()
    manifest = json.loads(text, parse_constant=lambda name: pytest.fail(f"report.json holds {name}"))
    conv2 = next(s for s in manifest["sections"] if s.get("layer") == "conv2")
    trained = conv2["data"]["tensors"][0]["trained"]
    assert trained["non_finite"] == 2
    finite = values[np.isfinite(values)]
    assert trained["max"] == pytest.approx(float(finite.max())) and trained["std"] == pytest.approx(finite.std())
    # The page's table for conv2 shows the count beside the fresh copy's 0.
    html = (out / "index.html").read_text()
    section = html[html.index('id="weights-conv2"'):]
    assert "<td>NaN or Inf</td><td>2</td><td>0</td>" in section[:section.index("</section>")]


def test_a_deep_model_draws_the_weights_of_one_layer_per_stage_and_lists_every_layer(keras, tmp_path):
    """Past 16 layers with weights, histograms and kernel grids are drawn for the first, the last and the last
    layer of each map size; every layer keeps its statistics section; --layers draws exactly the layers named."""
    import json

    from conftest import write_images

    from reportgen.api import generate_report
    from reportgen.config import ReportOptions

    inputs = keras.Input((16, 16, 3))
    x = inputs
    for stage in range(3):
        for i in range(6):
            x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=f"s{stage}_c{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{stage}")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    images = write_images(tmp_path / "images", size=(16, 16))

    def drawn(options: ReportOptions) -> tuple[set[str], int]:
        out = tmp_path / "out"
        generate_report(model, [images], out, options, force=True)
        sections = [s for s in json.loads((out / "report.json").read_text())["sections"] if s.get("layer")]
        return {s["layer"] for s in sections if s["figures"]}, len(sections)

    layers, listed = drawn(ReportOptions(sections=("weights",)))
    assert listed == 19  # every conv and the head
    assert layers == {"s0_c0", "s0_c5", "s1_c5", "s2_c5", "head"}
    layers, listed = drawn(ReportOptions(sections=("weights",), layers=("s1_c2", "s2_*")))
    assert listed == 19 and layers == {"s1_c2", *(f"s2_c{i}" for i in range(6))}
