"""The layer runner: captured outputs equal the layers' real outputs, gradients flow, nested paths resolve."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from reportgen.graph import layer_output_shapes, run_layers, walk_layers


def _reference(keras, model, container_path, layer_name, x):
    container = model if not container_path else model.get_layer(container_path)
    return keras.Model(container.inputs, container.get_layer(layer_name).output)(x).numpy()


def test_walk_layers_gives_nested_paths(nested_model):
    paths = [node.path for node in walk_layers(nested_model)]
    assert paths == ["conv_base", "conv_base/block1_conv1", "conv_base/block1_pool", "conv_base/block2_conv1",
                     "flatten", "head"]


def test_captured_outputs_equal_layer_outputs(keras, plain_model, nested_model, residual_model):
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    run = run_layers(plain_model, x, ["conv1", "pool1", "conv2"])
    for name in ("conv1", "pool1", "conv2"):
        np.testing.assert_allclose(run.captured[name], _reference(keras, plain_model, None, name, x), atol=1e-6)
    np.testing.assert_allclose(run.output, plain_model(x).numpy(), atol=1e-6)

    run = run_layers(nested_model, x, ["conv_base/block2_conv1"])
    np.testing.assert_allclose(run.captured["conv_base/block2_conv1"],
                               _reference(keras, nested_model, "conv_base", "block2_conv1", x), atol=1e-6)
    np.testing.assert_allclose(run.output, nested_model(x).numpy(), atol=1e-6)

    run = run_layers(residual_model, x, ["res_add", "dw"])
    for name in ("res_add", "dw"):
        np.testing.assert_allclose(run.captured[name], _reference(keras, residual_model, None, name, x), atol=1e-5)


def test_pre_activation_is_the_layer_without_its_activation_and_the_run_goes_on(keras, plain_model):
    """A layer's output before its own activation, against a copy of the layer built with none; the layers after
    it still see the activated output, so the model's output is unchanged."""
    x = np.random.default_rng(2).random((2, 32, 32, 3), dtype=np.float32)
    run = run_layers(plain_model, x, ["conv2"], pre_activation=["conv1", "pool1"])
    conv1 = plain_model.get_layer("conv1")
    linear = keras.layers.Conv2D.from_config({**conv1.get_config(), "activation": "linear"})
    linear.build((None, 32, 32, 3))
    linear.set_weights(conv1.get_weights())
    expected = linear(x).numpy()
    assert expected.min() < 0  # else the activation would change nothing
    np.testing.assert_allclose(run.pre_activations["conv1"], expected, atol=1e-6)
    # A layer without an activation: its output.
    np.testing.assert_allclose(run.pre_activations["pool1"], _reference(keras, plain_model, None, "pool1", x),
                               atol=1e-6)
    np.testing.assert_allclose(run.captured["conv2"], _reference(keras, plain_model, None, "conv2", x), atol=1e-6)
    np.testing.assert_allclose(run.output, plain_model(x).numpy(), atol=1e-6)
    assert conv1.activation is keras.activations.relu  # restored
    early = run_layers(plain_model, x, (), stop_early=True, pre_activation=["conv1"])
    assert early.output is None and list(early.pre_activations) == ["conv1"]


def test_gradients_reach_a_nested_layer(nested_model):
    x = tf.constant(np.random.default_rng(1).random((1, 32, 32, 3), dtype=np.float32))
    with tf.GradientTape() as tape:
        run = run_layers(nested_model, x, ["conv_base/block2_conv1"])
        score = run.output[:, 0]
    grads = tape.gradient(score, run.captured["conv_base/block2_conv1"])
    assert grads is not None and float(tf.reduce_sum(tf.abs(grads))) > 0


def test_stop_early_skips_the_rest(plain_model):
    run = run_layers(plain_model, np.zeros((1, 32, 32, 3), np.float32), ["pool1"], stop_early=True)
    assert run.output is None and list(run.captured) == ["pool1"]


def test_layer_output_shapes(nested_model):
    shapes = layer_output_shapes(nested_model, (32, 32, 3))
    assert shapes["conv_base/block1_conv1"] == (None, 30, 30, 8)
    assert shapes["head"] == (None, 3)


def test_graph_rewrites_are_off_inside_and_the_callers_options_come_back():
    import tensorflow as tf

    from reportgen.graph import without_graph_rewrites

    before = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"constant_folding": False})
    try:
        with without_graph_rewrites():
            assert tf.config.optimizer.get_experimental_options()["disable_meta_optimizer"] is True
        after = tf.config.optimizer.get_experimental_options()
        assert after["disable_meta_optimizer"] is False and after["constant_folding"] is False
    finally:
        tf.config.optimizer.set_experimental_options({**before, "constant_folding": True})


def test_pick_channel_is_each_rows_own_channel_and_its_gradient_the_one_hot():
    from reportgen.graph import pick_channel

    rng = np.random.default_rng(4)
    maps = rng.normal(size=(5, 3, 4, 6)).astype(np.float32)
    index = np.array([2, 0, 5, 5, 1], np.int32)
    values = tf.constant(maps)
    upstream = rng.normal(size=(5, 3, 4)).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(values)
        picked = pick_channel(values, tf.constant(index))
        total = tf.reduce_sum(picked * upstream)
    np.testing.assert_array_equal(picked.numpy(), maps[np.arange(5), :, :, index])  # numpy's fancy indexing
    # The gradient is the upstream on each row's own channel and zero on every other.
    expected = np.zeros_like(maps)
    expected[np.arange(5), :, :, index] = upstream
    np.testing.assert_array_equal(tape.gradient(total, values).numpy(), expected)
    # Rows of scores (B, C): one value per row, as a gather gives it; traced with an unknown class count too.
    scores = rng.normal(size=(4, 7)).astype(np.float32)
    rows = np.array([6, 0, 3, 3], np.int32)
    traced = tf.function(pick_channel, input_signature=[tf.TensorSpec([None, None]), tf.TensorSpec([None], tf.int32)])
    for pick in (pick_channel, traced):
        np.testing.assert_array_equal(pick(tf.constant(scores), tf.constant(rows)).numpy(),
                                      scores[np.arange(4), rows])


def test_convnext_nested_sequentials_run_layer_by_layer(keras):
    """ConvNeXt calls its stem and downsampling Sequentials with `mask=None`: they are walked like any nested
    model, every layer runs and each captured output equals the one Keras computes (a sub-model of the outer
    model for a top-level layer, of the nested Sequential on its captured input for a nested one)."""
    keras.utils.set_random_seed(0)
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3))
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    nodes = walk_layers(model)
    run = run_layers(model, x, [node.path for node in nodes])
    assert "convnext_tiny_downsampling_block_0/convnext_tiny_downsampling_conv_0" in run.captured
    top = [node for node in nodes if node.depth == 0]
    reference = keras.Model(model.inputs, [node.layer.output for node in top])(x, training=False)
    for node, expected in zip(top, reference, strict=True):
        np.testing.assert_allclose(run.captured[node.path], expected.numpy(), rtol=1e-5, atol=1e-5 * 255)
    stem_input = run.captured["convnext_tiny_prestem_normalization"]
    stem = model.get_layer("convnext_tiny_stem")
    for inner in stem.layers:
        expected = keras.Model(stem.inputs, inner.output)(stem_input).numpy()
        np.testing.assert_allclose(run.captured[f"convnext_tiny_stem/{inner.name}"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run.output, model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)
    assert layer_output_shapes(model, (32, 32, 3))["convnext_tiny_stem/convnext_tiny_stem_conv"] == (None, 8, 8, 96)
