"""Every generated claim about linearity, activations and class scores holds on the model it describes.

The claims come from the layer graph (`layer_kinds.image_linearity`, `graph.layer_sources`, the pattern target's
chain). Here each is checked against the real model numerically, without the graph walk: a function is affine in x
exactly when f(a x1 + (1 - a) x2) = a f(x1) + (1 - a) f(x2), and a layer output "has an activation" exactly when
it is not an affine function of the conv's pre-activation output (and the residual shortcuts it adds).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

ZOO = {  # name -> (constructor, input side): the sizes the constructors accept, small enough to build in ~1 s
    "vgg16": ("VGG16", 32),
    "resnet50": ("ResNet50", 32),
    "mobilenetv2": ("MobileNetV2", 32),
    "xception": ("Xception", 75),
    "efficientnetb0": ("EfficientNetB0", 32),
    "convnexttiny": ("ConvNeXtTiny", 32),
}
MIX = 1.7  # an affine combination that extrapolates, so a kink between x1 and x2 cannot hide
CLASS_NAMES = ("angry", "happy", "sad", "surprise")
SCALE = 1e5  # the probe images' range, +-SCALE


class Graph:
    """One model and what the text functions read about it."""

    def __init__(self, model, size: int, channels: int):
        from reportgen.graph import layer_output_shapes, layer_sources, walk_layers

        self.model, self.shape = model, (size, size, channels)
        self.nodes = walk_layers(model)
        self.layers = {n.path: n.layer for n in self.nodes}
        self.shapes = layer_output_shapes(model, self.shape)
        self.sources = layer_sources(model, self.shape)

    def images(self, count: int, seed: int) -> np.ndarray:
        """Random images far beyond the pixel range: random weights leave deep activations near 0 (EfficientNetB0's
        block6a at +-0.005 from pixels of +-2000), where smooth activations such as swish are nearly linear; inputs
        of +-1e5 give them +-40, where their curve shows."""
        return np.random.default_rng(seed).uniform(-SCALE, SCALE, (count, *self.shape)).astype("float32")


_BUILT: dict[str, Graph] = {}


def zoo_graph(keras, name: str) -> Graph:
    if name not in _BUILT:
        constructor, size = ZOO[name]
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, constructor)(weights=None, input_shape=(size, size, 3))
        _BUILT[name] = Graph(model, size, 3)
    return _BUILT[name]


@pytest.fixture(scope="module")
def mini(keras) -> Graph:
    from real_shapes import build_mini_xception

    return Graph(build_mini_xception(keras, classes=len(CLASS_NAMES)), 48, 1)


def merge_inputs(graph: Graph, layer: str, chain: tuple[str, ...]) -> list[str]:
    """The other inputs of every merge on the chain (a residual add's shortcut), read from Keras' own inbound
    tensors, not from the graph walk under test."""
    others = []
    for path in chain:
        inputs = getattr(graph.layers[path], "input", None)
        if isinstance(inputs, list):
            others += [t._keras_history.operation.name for t in inputs
                       if t._keras_history.operation.name not in (layer, *chain)]
    return others


class Probe:
    """One run of the model on 8 random images and a 9th, MIX * image 0 + (1 - MIX) * image 1, recording every
    output and pre-activation the checks need."""

    def __init__(self, graph: Graph, outputs, pre_activations, seed: int = 0):
        from reportgen.graph import run_layers

        images = graph.images(8, seed)
        batch = np.concatenate([images, MIX * images[:1] + (1 - MIX) * images[1:2]])
        run = run_layers(graph.model, batch, capture=sorted(set(outputs)), pre_activation=sorted(set(pre_activations)))
        self.values = {path: np.asarray(v, np.float64) for path, v in run.captured.items()}
        self.pre = {path: np.asarray(v, np.float64) for path, v in run.pre_activations.items()}

    def affine_error(self, path: str, before_activation: bool = False) -> float:
        """How far the output of `path` is from affine in the image: the largest deviation from
        f(a x1 + (1 - a) x2) = a f(x1) + (1 - a) f(x2), relative to the output's largest value."""
        out = (self.pre if before_activation else self.values)[path]
        deviation = np.abs(out[8] - (MIX * out[0] + (1 - MIX) * out[1])).max()
        return float(deviation / max(np.abs(out[[0, 1, 8]]).max(), 1e-12))

    def activation_residual(self, layer: str, output: str, others: list[str]) -> float:
        """How far `output` is from an affine function, channel by channel, of `layer`'s output before its own
        activation and of the merges' other inputs: 0 without an activation between them, clearly above with one."""
        target = self.values[output][:8]
        features = [self.pre[layer][:8]] + [self.values[o][:8] for o in others]
        worst = 0.0
        for c in range(target.shape[-1]):
            y = target[..., c].ravel()
            x = np.stack([f[..., c].ravel() for f in features] + [np.ones_like(y)], axis=1)
            fit = x @ np.linalg.lstsq(x, y, rcond=None)[0]
            worst = max(worst, float(np.abs(fit - y).max() / max(np.abs(y).max(), 1e-12)))
        return worst


def claims(text: str) -> dict[str, bool | None]:
    """The claims a target sentence makes: linear in the image (True, False, None: not said), has an activation."""
    linear = True if "is an affine function of the image" in text else False if "not linear in the image" in text \
        else None
    no_activation = "which has no activation" in text or "no activation follows it directly" in text
    activation = bool(re.search(r"(after its|its) [\w ]+ activation", text))
    assert no_activation != activation, text  # exactly one of the two is said
    return {"linear": linear, "activation": activation}


def check_targets(graph: Graph, targets, extra_pre=()) -> Probe:
    """Every target sentence's claims against one probe run; returns the probe for further checks."""
    from reportgen.sections.filter_patterns import target_text

    others = {t.output: merge_inputs(graph, t.layer, t.chain) for t in targets}
    probe = Probe(graph, [t.output for t in targets] + [o for found in others.values() for o in found],
                  [t.layer for t in targets] + list(extra_pre))
    for target in targets:
        text = target_text(target, graph.layers, graph.sources)
        said = claims(text)
        error = probe.affine_error(target.output)
        if said["linear"] is True:
            assert error < 1e-3, (text, error)
        elif said["linear"] is False:
            assert error > 1e-2, (text, error)
        residual = probe.activation_residual(target.layer, target.output, others[target.output])
        assert (residual > 1e-2) if said["activation"] else (residual < 1e-3), (text, residual)
    return probe


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_pattern_text_is_true_of_the_model(keras, name):
    """The report's pattern layers of each zoo model, plus its first and last conv: every claim about linearity in
    the image and about an activation agrees with the model's arithmetic."""
    from reportgen.layer_kinds import PATTERN_TYPES, image_linearity
    from reportgen.techniques.filter_patterns.targets import choose_targets, pattern_targets

    graph = zoo_graph(keras, name)
    convs = [n.path for n in graph.nodes if isinstance(n.layer, PATTERN_TYPES)]
    targets = choose_targets(graph.model, graph.nodes, graph.shapes)
    targets += [t for t in pattern_targets(graph.model, [convs[0], convs[-1]], graph.nodes)
                if t.output not in {u.output for u in targets}]
    probe = check_targets(graph, targets, extra_pre=(convs[0], convs[-1]))
    # Before its activation the first conv is affine in the image (what the scorecard's caption says of it); the
    # last conv, deep in the net, is not, and is never called so.
    first = image_linearity(graph.sources, graph.layers, convs[0], before_activation=True)
    last = image_linearity(graph.sources, graph.layers, convs[-1], before_activation=True)
    assert first.linear is True and probe.affine_error(convs[0], before_activation=True) < 1e-4
    assert last.linear is False and probe.affine_error(convs[-1], before_activation=True) > 1e-2
    assert last.cause in graph.layers  # a real layer is named as the reason


def test_mini_xception_separable_convs_are_not_called_linear_in_the_image(keras, mini):
    """fer's layout: the second separable conv of a block ends in batch norm before max pooling. Its patterns drive
    a quantity linear in the layer's input but not in the image, and the text says exactly that; the class-score
    conv has no activation and is not described as having one."""
    from reportgen.sections.filter_patterns import target_text
    from reportgen.techniques.filter_patterns.targets import pattern_targets

    convs = ["stem_conv1", "b1_sep1", "b1_sep2", "b2_sep2", "b3_sep2", "b3_short", "class_conv"]
    targets = {t.layer: t for t in pattern_targets(mini.model, convs, mini.nodes)}
    check_targets(mini, list(targets.values()))
    sep = target_text(targets["b2_sep2"], mini.layers, mini.sources)
    assert "not linear in the image" in sep and "flat field" not in sep and "two-level" not in sep
    assert "next comes b2_pool (MaxPooling2D)" in sep  # what follows, named from the graph
    score = target_text(targets["class_conv"], mini.layers, mini.sources)
    assert "has no activation" in score and "after its" not in score
    assert "the non-linear b2_relu1 (Activation, relu) lies between" in sep  # the nearest cause, named
    assert "its relu activation (stem_relu1)" in target_text(targets["stem_conv1"], mini.layers, mini.sources)


def _analysis(graph: Graph, names) -> SimpleNamespace:
    """The few parts of an `Analysis` that `class_labels` reads."""
    cache: dict = {}
    return SimpleNamespace(
        model=graph.model, layers=graph.nodes, layer_shapes=graph.shapes, size=graph.shape[:2],
        loaded=SimpleNamespace(input_shape=graph.shape), class_names=SimpleNamespace(names=list(names)),
        shared=lambda key, compute: cache[key] if key in cache else cache.setdefault(key, compute()))


def test_class_score_conv_filters_are_labelled_with_class_names(keras, mini):
    """Channel i of the mini-Xception's class conv, averaged over the map, is the logit of class i (checked
    against the model's own output); only that conv gets class names, in both sections' labels."""
    from reportgen.graph import run_layers
    from reportgen.sections.filter_patterns import class_labels, filter_name

    images = mini.images(4, 2) / SCALE
    run = run_layers(mini.model, images, capture=["class_conv"])
    logits = np.asarray(run.captured["class_conv"]).mean(axis=(1, 2))
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True), np.asarray(run.output), atol=1e-5)

    analysis = _analysis(mini, CLASS_NAMES)
    labels = class_labels(analysis, "class_conv")
    assert labels == dict(enumerate(CLASS_NAMES))
    assert [filter_name(f, labels) for f in range(4)] == list(CLASS_NAMES)
    assert all(class_labels(analysis, path) is None for path in ("stem_conv1", "b3_sep2", "b3_short"))
    assert class_labels(_analysis(mini, CLASS_NAMES[:3]), "class_conv") is None  # channels must match classes


def test_only_pooling_and_channel_wise_layers_may_follow_a_class_score_conv(keras):
    from reportgen.graph import layer_sources, walk_layers
    from reportgen.techniques.filter_patterns.targets import feeds_class_scores

    layers = keras.layers

    def feeds(head) -> bool:
        inputs = keras.Input((8, 8, 3))
        x = layers.Conv2D(4, 3, name="score")(inputs)
        model = keras.Model(inputs, head(x))
        graph = Graph(model, 8, 3)
        return feeds_class_scores(layer_sources(model, (8, 8, 3)), {n.path: n.layer for n in walk_layers(model)},
                                  graph.shapes, "score", 4)

    assert feeds(lambda x: layers.Activation("softmax")(layers.Reshape((4,))(layers.GlobalMaxPooling2D()(x))))
    assert not feeds(lambda x: layers.Flatten()(x))  # 6x6x4 values: not one per class
    assert not feeds(lambda x: layers.Dense(4)(layers.GlobalAveragePooling2D()(x)))  # a Dense mixes them
    assert not feeds(lambda x: layers.GlobalAveragePooling2D()(layers.Conv2D(4, 1)(x)))


def test_cam_advice_names_the_nearest_block_outputs_with_their_maps(keras):
    """`alternative_layers` on MobileNetV2: block outputs (`graph.block_outputs`, measured here) with a map of at
    least 2x2, the nearest to the chosen layer; the advice names them with their sizes, or the untrained cause."""
    from reportgen.graph import block_outputs
    from reportgen.sections.cams import cam_layer_advice
    from reportgen.techniques.cams.target_layer import alternative_layers, choose_target_layer

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), classes=5)
    graph = Graph(model, 96, 3)
    blocks = block_outputs(model, (96, 96, 3))
    chosen = choose_target_layer(graph.nodes, graph.shapes, blocks=blocks, classes=5).path
    found = alternative_layers(graph.nodes, graph.shapes, chosen, blocks, limit=3, classes=5)
    # The chosen 12x12 ReLU ends block 6's expansion; the nearest other block ends: block 5's residual add (the
    # same 12x12 map one block earlier), then block 6's depthwise ReLU and projection (6x6 after its stride).
    assert chosen == "block_6_expand_relu"
    assert found == (("block_5_add", (12, 12)), ("block_6_depthwise_relu", (6, 6)), ("block_6_project_BN", (6, 6)))
    for path, size in found:
        assert path in blocks and size == tuple(graph.shapes[path][1:3])
    advice = cam_layer_advice(found, untrained=False)
    for path, (h, w) in found:
        assert f"{path} ({h}x{w})" in advice
    assert advice.startswith("try --cam-layer ") and " or " in advice
    untrained = cam_layer_advice(found, untrained=True)
    assert "untrained" in untrained and "--cam-layer" not in untrained
    assert "--cam-layer" in cam_layer_advice((), untrained=False)
