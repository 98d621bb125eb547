"""Feature maps: stored maps equal Keras sub-model outputs, layer selection, batching, constant channels, figures."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from reportgen import figures
from reportgen.api import generate_report
from reportgen.config import ReportOptions
from reportgen.errors import InputError
from reportgen.graph import layer_output_shapes, traceable, walk_layers
from reportgen.loading.images import discover_images, load_images
from reportgen.loading.preprocess import Preprocessor
from reportgen.sections.feature_maps import GAP, LABEL_MARGIN, PAD, PANEL, feature_map_figure, grid_layout
from reportgen.techniques.feature_maps import (
    auto_batch_size,
    image_bytes,
    normalise_channels,
    select_layers,
)

CONV_AND_POOL = {
    "plain": ["conv1", "pool1", "conv2"],
    "nested": ["conv_base/block1_conv1", "conv_base/block1_pool", "conv_base/block2_conv1"],
    "residual": ["stem", "res_conv", "pool", "sep", "dw"],
}


def model_inputs(folder: Path, input_shape=(32, 32, 3)) -> np.ndarray:
    """The images as reportgen feeds them to the fixtures (auto preprocessing = pixels / 255)."""
    images = load_images(discover_images([folder]), input_shape)
    return Preprocessor("scale", channels=input_shape[2]).apply(images.pixels)


def run_report(model_path: Path, images: Path, out: Path, **options) -> tuple[dict, dict[str, np.ndarray]]:
    """generate_report with only the feature-map sections and --save-arrays; returns report.json and the arrays."""
    options = ReportOptions(sections=("feature_maps",), save_arrays=True, **options)
    generate_report(model_path, [images], out, options)
    manifest = json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in json"))
    with np.load(out / "arrays.npz") as arrays:
        return manifest, {key: arrays[key] for key in arrays.files}


def layer_sections(manifest: dict) -> list[dict]:
    return [s for s in manifest["sections"] if s["kind"] == "feature_maps" and "layer" in s]


def reference_maps(keras, model, path: str, x: np.ndarray) -> np.ndarray:
    """The tutorials' way: a sub-model up to the layer (on the base for a nested layer)."""
    if "/" in path:
        base_name, name = path.split("/")
        base = model.get_layer(base_name)
        return np.asarray(keras.Model(base.inputs, base.get_layer(name).output)(x))
    return np.asarray(keras.Model(model.inputs, model.get_layer(path).output)(x))


@pytest.mark.parametrize("name", ["plain", "nested", "residual"])
def test_stored_maps_equal_keras_submodel_outputs(keras, request, saved_models, shared_images, tmp_path, name):
    model = request.getfixturevalue(f"{name}_model")
    manifest, arrays = run_report(saved_models[name], shared_images, tmp_path / "out")
    x = model_inputs(shared_images)

    sections = layer_sections(manifest)
    assert [s["layer"] for s in sections] == CONV_AND_POOL[name]  # one section per conv/pool layer, in order
    listed = {entry["layer"]: entry for entry in manifest["feature_maps"]}
    assert list(listed) == CONV_AND_POOL[name]
    for section in sections:
        key = section["data"]["array_key"]
        assert section["arrays"] == [key] and listed[section["layer"]]["array_key"] == key
        np.testing.assert_allclose(arrays[key], reference_maps(keras, model, section["layer"], x), rtol=1e-5,
                                   atol=1e-5)
        assert arrays[key].dtype == np.float32 and arrays[key].shape[0] == len(manifest["images"])
        # one figure per image, named from the layer and the image so each image's maps can be found
        figures_by_image = {entry["image"]: entry["figure"] for entry in section["data"]["images"]}
        assert list(figures_by_image) == [image["id"] for image in manifest["images"]]
        assert [f["key"] for f in section["figures"]] == list(figures_by_image.values())
        assert all(f["width"] <= figures.MAX_FIGURE_WIDTH for f in section["figures"])
        # statistics agree with the stored maps
        maps = arrays[key]
        data = section["data"]
        # Zeros mean "off" only for a rectified output; a signed one (res_conv before its batch norm) has none.
        if maps.min() >= 0:
            assert data["sparsity"] == pytest.approx(np.mean(maps == 0)) and data["rectified"]
        else:
            assert data["sparsity"] is None and not data["rectified"]
        assert data["mean_activation"] == pytest.approx(float(maps.mean()), rel=1e-5, abs=1e-7)
        dead = np.flatnonzero(np.ptp(maps, axis=(0, 1, 2)) == 0).tolist()  # one value everywhere
        assert data["dead_channel_indices"] == dead and data["dead_channels"] == len(dead)
    overview = next(s for s in manifest["sections"] if s["id"] == "feature-maps")
    assert overview["data"]["layers"] == CONV_AND_POOL[name]


def test_batch_size_smaller_than_image_count_gives_identical_arrays(saved_models, shared_images, tmp_path):
    manifest, whole = run_report(saved_models["residual"], shared_images, tmp_path / "whole")
    assert len(manifest["images"]) == 6
    small_manifest, batched = run_report(saved_models["residual"], shared_images, tmp_path / "batched", batch_size=4)
    assert small_manifest["sections"][0]["data"]["batch_size"] == 4 and manifest["sections"][0]["data"][
        "batch_size"] == 6
    assert whole.keys() == batched.keys()
    for key in whole:
        np.testing.assert_array_equal(whole[key], batched[key])


def test_layers_glob_chooses_any_4d_layer(keras, residual_model, saved_models, shared_images, tmp_path):
    manifest, arrays = run_report(saved_models["residual"], shared_images, tmp_path / "out", layers=("res_*",))
    chosen = [s["layer"] for s in layer_sections(manifest)]
    assert chosen == ["res_conv", "res_bn", "res_add", "res_relu"]  # batch norm, add and activation included
    x = model_inputs(shared_images)
    for section in layer_sections(manifest):
        np.testing.assert_allclose(arrays[section["data"]["array_key"]],
                                   reference_maps(keras, residual_model, section["layer"], x), rtol=1e-5, atol=1e-5)


def test_transposed_convolutions_by_default_and_concatenate_on_request(keras, shared_images, tmp_path):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((32, 32, 3))
    down = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="down")(inputs)
    up = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same", name="up")(down)
    merged = keras.layers.Concatenate(name="merge")([inputs, up])
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(merged))
    model = keras.Model(inputs, outputs, name="unet_like")
    path = tmp_path / "unet_like.keras"
    model.save(path)
    manifest, _ = run_report(path, shared_images, tmp_path / "default")
    assert [s["layer"] for s in layer_sections(manifest)] == ["down", "up"]
    manifest, arrays = run_report(path, shared_images, tmp_path / "chosen", layers=("up", "merge"))
    x = model_inputs(shared_images)
    for section in layer_sections(manifest):
        np.testing.assert_allclose(arrays[section["data"]["array_key"]],
                                   reference_maps(keras, model, section["layer"], x), rtol=1e-5, atol=1e-5)
    assert arrays["feature_maps.merge"].shape[-1] == 7  # 3 image channels + 4 from the transposed conv


def test_each_image_links_to_its_own_maps_at_every_layer(saved_models, shared_images, tmp_path):
    manifest, _ = run_report(saved_models["plain"], shared_images, tmp_path / "out")
    html = (tmp_path / "out" / "index.html").read_text()
    overview = html[html.index('id="feature-maps"'):html.index("</section>", html.index('id="feature-maps"'))]
    for entry in manifest["feature_maps"]:
        assert len(entry["figures"]) == len(manifest["images"])
        for key in entry["figures"].values():
            assert f'href="#{key}"' in overview  # from the image's row in the overview...
            assert f'<figure class="figure" id="{key}"' in html  # ...to that image's figure at that layer


@pytest.fixture(scope="module")
def graphs(plain_model, nested_model, residual_model):
    return {model.name: (walk_layers(model), layer_output_shapes(model, (32, 32, 3)))
            for model in (plain_model, nested_model, residual_model)}


@pytest.mark.parametrize(("name", "patterns", "expected"), [
    ("plain", (), CONV_AND_POOL["plain"]),
    ("plain", ("conv*",), ["conv1", "conv2"]),
    ("plain", ("pool1", "conv1"), ["conv1", "pool1"]),  # execution order, not pattern order
    ("nested", ("block1_*",), ["conv_base/block1_conv1", "conv_base/block1_pool"]),  # glob on the bare name
    ("nested", ("conv_base/*conv*",), ["conv_base/block1_conv1", "conv_base/block2_conv1"]),  # glob on the path
    ("nested", ("block2_conv1",), ["conv_base/block2_conv1"]),  # bare name of a nested layer
    ("nested", ("*",), CONV_AND_POOL["nested"]),  # globs skip the container and the flat head
    ("nested", ("conv_base",), ["conv_base"]),  # ... but a nested model named exactly is fine
    ("nested", ("conv_bas?",), ["conv_base"]),  # ... or matched alone
    ("residual", ("res_*", "dw"), ["res_conv", "res_bn", "res_add", "res_relu", "dw"]),
])
def test_select_layers(graphs, name, patterns, expected):
    nodes, shapes = graphs[name]
    assert [node.path for node in select_layers(nodes, shapes, patterns)] == expected


@pytest.mark.parametrize(("name", "patterns", "words"), [
    ("plain", ("nope*",), ["--layers", "'nope*'", "matches no layer"]),
    ("plain", ("gap",), ["--layers", "gap", "GlobalAveragePooling2D", "4-D"]),
    ("plain", ("conv1", "predictions"), ["--layers", "predictions", "Dense"]),
    ("nested", ("fl*",), ["--layers", "flatten"]),  # a glob with no 4-D match
])
def test_select_layers_errors_name_the_option(graphs, name, patterns, words):
    nodes, shapes = graphs[name]
    with pytest.raises(InputError) as caught:
        select_layers(nodes, shapes, patterns)
    for word in words:
        assert word in str(caught.value)


def test_cli_reports_bad_layers_as_usage_error(cli, saved_models, shared_images, tmp_path):
    result = cli("generate", saved_models["plain"], shared_images, "-o", tmp_path / "out", "--sections",
                 "feature_maps", "--layers", "conv*,nothing_here")
    assert result.exit_code == 2
    assert "--layers" in result.output and "nothing_here" in result.output
    assert not (tmp_path / "out").exists()


def test_auto_batch_size_keeps_one_batch_under_the_budget():
    shapes = {"a": (None, 224, 224, 64), "b": (None, 112, 112, 64)}
    per_image = image_bytes(shapes, ["a", "b"])
    assert per_image == 4 * (224 * 224 * 64 + 112 * 112 * 64)
    budget = 1 << 30
    batch = auto_batch_size(shapes, ["a", "b"], images=1000, budget=budget)
    assert batch * per_image <= budget < (batch + 1) * per_image
    assert auto_batch_size(shapes, ["a", "b"], images=3, budget=budget) == 3
    assert auto_batch_size(shapes, ["a"], images=5, budget=10) == 1  # never below one image


def test_normalise_channels_is_per_channel_min_max_and_flags_constants():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 5, 6, 5)).astype(np.float32) * np.array([1e-4, 1.0, 1e4, 1, 1], np.float32)
    maps[:, :, :, 3] = 0.0  # dead
    maps[0, :, :, 4] = 2.5  # constant but not zero on image 0
    maps[1, 0, 0, 4] = 7.0  # varies on image 1
    maps[0, 1, 1, 1] = np.nan
    result = normalise_channels(maps)
    assert np.isfinite(result.unit).all() and result.unit.min() >= 0 and result.unit.max() <= 1
    assert result.constant.tolist() == [[False, False, False, True, True], [False, False, False, True, False]]
    assert result.non_finite == 1
    for image, channel in [(0, 0), (0, 2), (1, 1), (1, 4)]:  # every varying channel spans the whole colormap
        assert result.unit[image, :, :, channel].min() == 0 and result.unit[image, :, :, channel].max() == 1
    np.testing.assert_allclose(result.unit[1, :, :, 2], (maps[1, :, :, 2] - maps[1, :, :, 2].min()) /
                               np.ptp(maps[1, :, :, 2]), atol=1e-6)
    assert (result.unit[result.constant.nonzero()[0], :, :, result.constant.nonzero()[1]] == 0).all()


def test_dead_and_constant_channels(keras, shared_images, tmp_path):
    """Zero kernels: dead channels are counted, constant tiles are drawn hatched, nothing is NaN. A channel that
    is 0.5 on every image carries no more information than one that is 0: both are dead."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="silent")(x)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    kernel, bias = model.get_layer("conv1").get_weights()
    kernel[..., [1, 5]] = 0.0
    bias[1], bias[5] = 0.0, 0.5  # channel 1 zero, channel 5 constant 0.5: both dead
    model.get_layer("conv1").set_weights([kernel, bias])
    model.get_layer("silent").set_weights([np.zeros_like(w) for w in model.get_layer("silent").get_weights()])
    path = tmp_path / "zeros.keras"
    model.save(path)

    manifest, arrays = run_report(path, shared_images, tmp_path / "out")
    conv1, silent = layer_sections(manifest)
    assert conv1["data"]["dead_channel_indices"] == [1, 5] and conv1["data"]["dead_share"] == pytest.approx(2 / 8)
    assert all(image["constant_channels"] == 2 for image in conv1["data"]["images"])
    assert silent["data"]["dead_channels"] == 4 and silent["data"]["dead_share"] == 1.0
    assert silent["data"]["sparsity"] == 1.0 and silent["data"]["mean_activation"] == 0.0
    assert all(np.isfinite(a).all() for a in arrays.values())
    assert any("silent" in warning and "4 of 4" in warning for warning in manifest["warnings"])

    # the figure: channels 1 and 5 are the hatched tile, the others are colormapped
    layout = grid_layout(32, 32, 8)
    th, tw = layout.tile
    figure = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / conv1["figures"][0]["file"])), cv2.COLOR_BGR2RGB)
    x0 = figures.fit_box(np.zeros((32, 32, 3), np.uint8), PANEL).shape[1] + GAP + LABEL_MARGIN + PAD
    hatch = figures.hatched(th, tw)
    for channel in range(8):
        tile = figure[PAD:PAD + th, x0 + channel * (tw + PAD):x0 + channel * (tw + PAD) + tw]
        assert np.array_equal(tile, hatch) == (channel in (1, 5))


def test_figures_fit_the_page_and_big_layers_get_smaller_tiles():
    rng = np.random.default_rng(0)
    panel = np.zeros((160, 160, 3), np.uint8)
    widths, tiles = {}, {}
    for height, channels in [(224, 64), (56, 256), (14, 512), (7, 2048), (5, 3)]:
        layout = grid_layout(height, height, channels)
        unit = rng.random((height, height, channels), dtype=np.float32)
        pixels = feature_map_figure(unit, np.zeros(channels, bool), panel, layout)
        assert pixels.dtype == np.uint8 and pixels.shape[1] <= figures.MAX_FIGURE_WIDTH
        widths[channels], tiles[channels] = pixels.shape[1], layout.tile[0]
        if layout.tile[0] >= height:  # small maps are enlarged by whole numbers only
            assert layout.tile[0] % height == 0
        assert layout.columns == (16 if channels <= 512 else 64)
        assert pixels.shape[0] * pixels.shape[1] < 1_200_000  # a few hundred kilobytes, not megabytes
    assert tiles[64] > tiles[256] > tiles[512] and tiles[512] >= 14 >= tiles[2048]


def test_resize_stack_and_tile_mosaic():
    rng = np.random.default_rng(0)
    stack = rng.random((3, 12, 9), dtype=np.float32)
    # whole multiples repeat pixels
    np.testing.assert_array_equal(figures.resize_stack(stack, (24, 27)), np.repeat(np.repeat(stack, 2, axis=1), 3,
                                                                                         axis=2))
    shrunk = figures.resize_stack(stack, (4, 3))  # 3x3 blocks: area resampling is the block mean
    np.testing.assert_allclose(shrunk, stack.reshape(3, 4, 3, 3, 3).mean(axis=(2, 4)), atol=1e-6)
    odd = figures.resize_stack(stack, (5, 7))
    np.testing.assert_allclose(odd.mean(axis=(1, 2)), stack.mean(axis=(1, 2)), atol=1e-5)  # area keeps the mean
    np.testing.assert_allclose(odd[1], cv2.resize(stack[1], (7, 5), interpolation=cv2.INTER_AREA), atol=1e-5)
    tiles = rng.integers(0, 256, (11, 6, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(figures.tile_mosaic(tiles, 4, pad=2), figures.tile_grid(tiles, 4, pad=2))


def test_layer_names_that_are_not_tensorflow_scopes_run_eagerly(keras, shared_images, tmp_path):
    keras.utils.set_random_seed(2)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="conv 1 <b>")(inputs)
    x = keras.layers.MaxPooling2D(name="pool é")(x)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    assert not traceable(model)
    path = tmp_path / "names.keras"
    model.save(path)
    manifest, arrays = run_report(path, shared_images, tmp_path / "out")
    x = model_inputs(shared_images)
    sections = layer_sections(manifest)
    assert [s["layer"] for s in sections] == ["conv 1 <b>", "pool é"]
    for section in sections:
        np.testing.assert_allclose(arrays[section["data"]["array_key"]],
                                   reference_maps(keras, model, section["layer"], x), rtol=1e-5, atol=1e-5)


def test_figures_are_encoded_as_they_are_made(saved_models, shared_images, tmp_path):
    """A report holds every layer's figure for every image: handed to the encoder as it is drawn (compressed on
    its threads), never kept as raw grids."""
    from reportgen.report import PendingImage

    result = generate_report(saved_models["plain"], [shared_images], tmp_path / "out",
                             ReportOptions(sections=("feature_maps",)))
    made = [f for s in result.sections if s.kind == "feature_maps" for f in s.figures()]
    assert made and all(isinstance(f.pixels, PendingImage) for f in made)
    for figure in made:  # the bytes in figures/ are the ones made during the pass
        encoded = figure.pixels.result()
        file = tmp_path / "out" / "figures" / f"{figure.key}.png"
        assert file.read_bytes() == encoded.png
        assert cv2.imdecode(np.frombuffer(encoded.png, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (
            encoded.height, encoded.width)


def test_layer_statistics_merged_over_random_splits_equal_the_statistics_at_once():
    """The accumulator streams: any split of the images, merged in any order, gives the statistics of all of them
    computed at once with numpy, for a rectified and a signed layer."""
    from reportgen.graph import LayerNode
    from reportgen.techniques.feature_maps import LayerStatsAccumulator

    rng = np.random.default_rng(0)
    signed = rng.normal(size=(11, 5, 4, 6)).astype(np.float32)
    signed[..., 2] = 0.25  # one value everywhere: dead although not zero
    rectified = np.maximum(signed, 0)
    rectified[..., 4] = 0.0
    for maps in (signed, rectified):
        node = LayerNode("layer", None, 0, None)
        whole = LayerStatsAccumulator(node, maps.shape[1:])
        whole.update(maps, normalise_channels(maps))
        cuts = np.sort(rng.choice(np.arange(1, 11), size=3, replace=False))
        parts = []
        for chunk in np.split(maps, cuts):
            part = LayerStatsAccumulator(node, maps.shape[1:])
            part.update(chunk, normalise_channels(chunk))
            parts.append(part)
        merged = parts.pop()
        for part in parts:
            merged.merge(part)
        for got in (whole.result(), merged.result()):
            assert got.images == 11
            assert got.mean_activation == pytest.approx(float(maps.mean(dtype=np.float64)), rel=1e-6)
            assert got.min == maps.min() and got.max == maps.max()
            assert list(got.dead_channels) == np.flatnonzero(np.ptp(maps, axis=(0, 1, 2)) == 0).tolist()
            if maps.min() >= 0:
                assert got.sparsity == pytest.approx(float(np.mean(maps == 0))) and got.rectified
            else:
                assert np.isnan(got.sparsity) and not got.rectified


@pytest.mark.parametrize("name", ["viridis", "jet", "inferno"])
def test_colormap_is_opencvs_on_any_shape(name):
    """The lookup-table colormap gives OpenCV's own colours, whatever the array's shape."""
    values = np.random.default_rng(3).uniform(-0.2, 1.2, (3, 37, 29)).astype(np.float32)
    index = np.clip(values * 255.0, 0, 255).round().astype(np.uint8)
    expected = np.stack([cv2.applyColorMap(plane, figures._OPENCV_MAPS[name])[..., ::-1] for plane in index])
    assert np.array_equal(figures.colormap(values, name), expected)


@pytest.mark.parametrize("size", [(12, 12), (36, 24), (7, 10), (5, 5)])
def test_coloured_stack_equals_colouring_the_resized_stack(size):
    stack = np.random.default_rng(4).random((3, 6, 6)).astype(np.float32)
    expected = figures.colormap(figures.resize_stack(stack, size), "viridis")
    assert np.array_equal(figures.colormap_stack(stack, size, "viridis"), expected)
