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


def test_a_reshaped_kernel_is_distinguishable_from_its_initialiser(keras, plain_model):
    """Scale one kernel 5x: its values are no longer a draw of the initialiser (the KS distance, checked against
    the empirical distribution functions compared at every value, passes the critical value); the untouched
    kernels are fresh draws of theirs and stay below it."""
    trained = keras.models.clone_model(plain_model)
    trained.set_weights(plain_model.get_weights())
    conv = trained.get_layer("conv1")
    conv.kernel.assign(conv.kernel * 5.0)
    comparisons = {(c.layer, c.tensor): c for c in compare_weights(walk_layers(trained),
                                                                   walk_layers(fresh_copy(trained, 0)))}
    assert set(comparisons) == {("conv1", "kernel"), ("conv2", "kernel"), ("predictions", "kernel")}
    conv1 = comparisons[("conv1", "kernel")]
    assert conv1.trained.stats.std == pytest.approx(5 * conv1.fresh.stats.std, rel=0.3)
    assert conv1.trained_counts.sum() == conv1.trained.values.size
    for comparison in comparisons.values():  # small tensors: every value compared, no sampling
        a, b = comparison.trained.values.ravel(), comparison.fresh.values.ravel()
        points = np.concatenate([a, b])[:, None]
        expected = np.abs((a <= points).mean(axis=1) - (b <= points).mean(axis=1)).max()
        assert comparison.distance.statistic == pytest.approx(expected)
    assert not conv1.distance.indistinguishable
    assert comparisons[("conv2", "kernel")].distance.indistinguishable
    assert comparisons[("predictions", "kernel")].distance.indistinguishable


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
    tile = 3 * zoom + pad
    assert pixels.shape == (pad + 3 * tile, pad + 3 * tile, 3)  # 8 filters, 3 to a row: near square
    for f in range(8):
        row, column = divmod(f, 3)
        for a in range(3):
            for b in range(3):
                y, x = pad + row * tile + a * zoom + zoom // 2, pad + column * tile + b * zoom + zoom // 2
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
    rows, in order, in a near-square grid (28 x 28), not one 17,666 px column (WebP refuses images over 16,383 px)."""
    from reportgen.figures import diverging

    kernel = np.random.default_rng(0).normal(size=(7, 7, 1, 768)).astype(np.float32)
    pixels, caption = kernel_grid(kernel)
    zoom, pad = 3, 2
    tile = 7 * zoom + pad
    assert pixels.shape[:2] == (pad + 28 * tile, pad + 28 * tile)
    assert "28 to a row" in caption
    colours = diverging(kernel / np.abs(kernel).max())
    for f in (0, 17, 767):
        row, column = divmod(f, 28)
        y, x = pad + row * tile + zoom // 2, pad + column * tile + zoom // 2
        np.testing.assert_array_equal(pixels[y, x], colours[0, 0, 0, f])


def _weights_section(model, seed: int = 0):
    """The weights section builder run on `model` against its fresh copy, with only what it reads of an Analysis
    (no images, no dataset pass, plots drawn here)."""
    from types import SimpleNamespace

    from reportgen.loading.preprocess import Preprocessor
    from reportgen.report import slugify
    from reportgen.sections.weights import build

    layers = walk_layers(model)
    analysis = SimpleNamespace(
        layers=layers, fresh_layers=walk_layers(fresh_copy(model, seed)), layer_shapes={},
        layer_slugs={node.path: slugify(node.path) for node in layers}, preprocessor=Preprocessor("scale"),
        options=ReportOptions(sections=("weights",), seed=seed), progress=lambda *args: None,
        plot=lambda draw, *args, page=True, **kwargs: draw(*args, **kwargs))
    return build(analysis, {})


def _grids(result, layer: str):
    """The trained and fresh kernel figures of `layer`'s section."""
    from reportgen.report import FigureRow

    section = next(s for s in result.sections if s.layer == layer)
    row = next(b for b in section.blocks if isinstance(b, FigureRow))
    return row.figures


def test_trained_and_fresh_grids_draw_equal_weights_in_equal_colours(keras, plain_model):
    """A trained kernel three times the spread of the fresh one: a weight value present in both is drawn in the
    same colour in both figures, the colour of that value over the larger of the two largest |w|. Each grid on its
    own maximum (as before) would draw it paler in the trained grid."""
    from reportgen.figures import diverging

    model = keras.models.clone_model(plain_model)
    model.set_weights(plain_model.get_weights())
    fresh = fresh_copy(model, 0).get_layer("conv2").kernel.numpy()  # (3, 3, 8, 16), what the section draws
    trained = (3.0 * fresh.std() * np.random.default_rng(1).standard_normal(fresh.shape)).astype(np.float32)
    where = np.unravel_index(np.argmax(np.abs(fresh)), fresh.shape)  # full colour in a grid of its own
    value = fresh[where]
    trained[0, 0, 5, 9] = value
    model.get_layer("conv2").kernel.assign(trained)
    trained_figure, fresh_figure = _grids(_weights_section(model), "conv2")
    assert "same colour scale as the trained grid" in fresh_figure.caption
    scale = max(np.abs(trained).max(), np.abs(fresh).max())
    assert f"|w| = {scale:.3g} is full colour" in fresh_figure.caption

    zoom, pad = 8, 2  # one row per filter, one tile per input channel: the tile of (c, f) is at row f, column c
    tile = 3 * zoom + pad

    def colour(pixels: np.ndarray, a: int, b: int, c: int, f: int) -> np.ndarray:
        return pixels[pad + f * tile + a * zoom + zoom // 2, pad + c * tile + b * zoom + zoom // 2]

    in_trained = colour(trained_figure.pixels, 0, 0, 5, 9)
    in_fresh = colour(fresh_figure.pixels, *where)
    np.testing.assert_array_equal(in_trained, in_fresh)
    np.testing.assert_array_equal(in_fresh, diverging(value / scale))
    assert np.abs(in_fresh.astype(int) - diverging(value / np.abs(fresh).max())).max() > 20  # the old way differs
    # Both figures carry the same colour bar under the grid: the same pixels at the same place from the bottom.
    bar = slice(-30, None)
    np.testing.assert_array_equal(trained_figure.pixels[bar, :150], fresh_figure.pixels[bar, :150])


def test_a_depthwise_kernel_is_drawn_as_a_near_square_grid_in_channel_order():
    """(3, 3, 64, 1): 64 tiles 8 to a row, channel c at row c // 8, column c % 8, not one row of 64 tiles; a
    multiplier of 2 keeps the output channel order c * 2 + j. Aspect ratio within 2:1 with the colour bar too."""
    from reportgen.figures import diverging

    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(3, 3, 64, 1)).astype(np.float32)
    for bar in (False, True):
        pixels, caption = kernel_grid(kernel, depthwise=True, colour_bar=bar)
        height, width = pixels.shape[:2]
        assert 0.5 <= height / width <= 2.0, pixels.shape
    assert "depthwise" in caption and "8 to a row" in caption and "near-square" in caption
    pixels, _ = kernel_grid(kernel, depthwise=True)
    zoom, pad = 8, 2
    tile = 3 * zoom + pad
    colours = diverging(kernel / np.abs(kernel).max())
    for c in (0, 9, 63):
        row, column = divmod(c, 8)
        np.testing.assert_array_equal(pixels[pad + row * tile + zoom + 4, pad + column * tile + 2 * zoom + 4],
                                      colours[1, 2, c, 0])
    doubled = rng.normal(size=(3, 3, 32, 2)).astype(np.float32)
    pixels, caption = kernel_grid(doubled, depthwise=True)
    assert "32 input channels x 2" in caption
    colours = diverging(doubled / np.abs(doubled).max())
    for c, j in ((0, 1), (20, 0), (31, 1)):
        row, column = divmod(c * 2 + j, 8)
        np.testing.assert_array_equal(pixels[pad + row * tile + 4, pad + column * tile + 4], colours[0, 0, c, j])
    # A plain conv of the same shape (a one-filter head) wraps its one long row too.
    pixels, caption = kernel_grid(kernel)
    assert 0.5 <= pixels.shape[0] / pixels.shape[1] <= 2.0 and "8 to a row" in caption


def test_the_weights_section_draws_a_depthwise_layer_square(keras):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 64)), keras.layers.DepthwiseConv2D(3, name="dw")])
    trained, fresh = _grids(_weights_section(model), "dw")
    for figure in (trained, fresh):
        height, width = figure.pixels.shape[:2]
        assert 0.5 <= height / width <= 2.0, figure.pixels.shape
    assert "depthwise kernel" in trained.caption


def _ks_column(result) -> dict[str, str]:
    overview = result.sections[0].blocks[0]
    column = overview.columns.index("KS distance to initialiser (critical)")
    assert "sqrt(2)" in overview.caption
    return {row[0]: row[column] for row in overview.rows}


def test_the_ks_column_tells_a_random_model_from_a_briefly_trained_one(keras):
    """The same small net, random then trained 200 steps on a simple task (which quadrant holds a bright square):
    every kernel indistinguishable from its initialiser before, distinguishable after. The norm-based "relative
    change" read about sqrt(2) on both; and the verdict gets each tensor's distance in `shared`."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((12, 12, 3)), keras.layers.Conv2D(32, 3, activation="relu", name="conv1"),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv2"), keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(), keras.layers.Dense(4, activation="softmax", name="head")])
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 256)
    images = rng.normal(0.0, 0.3, (256, 12, 12, 3)).astype(np.float32)
    for image, label in zip(images, labels, strict=True):
        row, column = divmod(int(label), 2)
        image[row * 6:row * 6 + 6, column * 6:column * 6 + 6] += 1.0

    before = _weights_section(model)
    assert all(cell.endswith(" indistinguishable") for cell in _ks_column(before).values()), _ks_column(before)
    model.compile(keras.optimizers.Adam(3e-2), "sparse_categorical_crossentropy", steps_per_execution=8)
    model.fit(images, labels, batch_size=32, epochs=25, verbose=0)  # 200 steps
    after = _weights_section(model)
    column = _ks_column(after)
    assert set(column) == {"conv1", "conv2", "head"}
    assert all(cell.endswith(" distinguishable") and "indistinguishable" not in cell for cell in column.values()), \
        column
    shared = after.shared["initialiser_distances"]
    assert [(layer, tensor) for layer, tensor, _ in shared] == [("conv1", "kernel"), ("conv2", "kernel"),
                                                                 ("head", "kernel")]
    assert all(distance.statistic > distance.critical for _, _, distance in shared)
    tensors = [s.data["tensors"][0] for s in after.sections if s.layer]
    assert all("relative_change" not in t and t["initialiser_distance"]["indistinguishable"] is False
               for t in tensors)


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
    assert "<td>NaN or Inf</td><td>2</td><td>0</td>" in section[:section.index("</table>")]  # its first table


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
