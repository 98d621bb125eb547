"""The shared pipeline and its results: `compute_maps` runs the layer pass once per batch and every method on
it; `explain` adds to each map its deletion / insertion scores against a random map and, per method, the
model-randomisation check; `faithfulness` and `same_maps` read the results."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen import seeds
from reportgen.techniques.cam_trust import (
    DELETION_STEPS,
    CurvesProgress,
    SanityCheck,
    deletion_insertion,
    random_maps,
    sanity_check,
)
from reportgen.techniques.cams.methods import METHODS, CamSettings, MethodBatch
from reportgen.techniques.cams.model_functions import ModelFunctions, ScoreHead, score_head
from reportgen.techniques.cams.target_layer import TargetLayer
from reportgen.techniques.predictions import Target, output_units


def pad_slots(targets: Sequence[Sequence[Target]]) -> tuple[np.ndarray, np.ndarray]:
    """(B, T) class slots, short rows padded with their first class, and the (B, T) mask of real slots."""
    width = max((len(row) for row in targets), default=1)
    slots = np.zeros((len(targets), width), np.int32)
    valid = np.zeros((len(targets), width), bool)
    for i, row in enumerate(targets):
        classes = [t.class_index for t in row] or [0]
        slots[i] = classes + [classes[0]] * (width - len(classes))
        valid[i, :len(row)] = True
    return slots, valid


def compute_maps(
    functions: ModelFunctions,
    inputs: np.ndarray,
    targets: Sequence[Sequence[Target]],
    methods: Sequence[str],
    settings: CamSettings,
    baseline: np.ndarray,
    value_range: float,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[list[np.ndarray]]]:
    """Raw maps (before normalisation) per method, image and target: maps[method][image][target] (h, w).

    Per batch of images the layer pass runs once and every layer method reuses its activations and gradients.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown CAM methods {unknown}")
    needs_layer = any(METHODS[m].resolution == "layer" for m in methods)
    if needs_layer and functions.layer is None:
        raise ValueError("layer methods need a target layer")
    out: dict[str, list[list[np.ndarray]]] = {m: [] for m in methods}
    size = max(1, settings.batch_size)
    for start in range(0, len(inputs), size):
        rows = targets[start:start + size]
        x = np.asarray(inputs[start:start + size], np.float32)
        slots, valid = pad_slots(rows)
        activations = gradients = None
        if needs_layer:
            activations, gradients = functions.layer_pass(x, slots)
        batch = MethodBatch(x, slots, activations, gradients, functions, settings, np.asarray(baseline, np.float32),
                            float(value_range))
        for method in methods:
            if progress:
                progress(f"{METHODS[method].label}: images {start + 1}-{start + len(x)} of {len(inputs)}")
            maps = np.asarray(METHODS[method].function(batch), np.float32)
            for i in range(len(x)):
                out[method].append([maps[i, t] for t in range(slots.shape[1]) if valid[i, t]])
    return out


@dataclass(frozen=True)
class Heatmap:
    """One map of one method for one image and class, with the deletion / insertion scores that qualify it."""

    method: str
    image: int
    target: Target
    raw: np.ndarray  # (h, w) at the method's resolution (target layer or input), before normalisation
    probability: float  # the class probability on the intact image
    deletion_auc: float  # lower is better
    insertion_auc: float  # higher is better
    random_deletion_auc: float  # the same image and class with a random map of the same resolution
    random_insertion_auc: float


@dataclass(frozen=True)
class CamResults:
    layer: TargetLayer | None
    methods: tuple[str, ...]
    head: ScoreHead
    heatmaps: tuple[Heatmap, ...]
    sanity: dict[str, SanityCheck]
    fresh_maps: dict[str, list[list[np.ndarray]]]  # the fresh model's maps of the first `sanity_images` images
    sanity_images: int
    steps: int
    curves_dtype: str = "float32"  # the arithmetic of the deletion and insertion curves' forward passes

    def for_method(self, method: str) -> list[Heatmap]:
        return [h for h in self.heatmaps if h.method == method]


@dataclass(frozen=True)
class Faithfulness:
    """How one method's maps fare under deletion and insertion, against random maps on the same images.

    The margin is (insertion - deletion) of the method's maps minus that of the random maps, averaged over every
    map: positive when the pixels the method ranks first matter more to the model than random pixels do.
    """

    method: str
    maps: int
    deletion_auc: float
    insertion_auc: float
    random_deletion_auc: float
    random_insertion_auc: float
    beats_random_deletion: int  # maps whose deletion AUC is below their random map's
    empty_maps: int

    @property
    def margin(self) -> float:
        return (self.insertion_auc - self.deletion_auc) - (self.random_insertion_auc - self.random_deletion_auc)

    @property
    def beats_random(self) -> bool:
        return bool(self.margin > 0)


def faithfulness(results: CamResults) -> dict[str, Faithfulness]:
    """Per method, its mean deletion and insertion AUC against the random maps' (`Faithfulness`)."""
    from reportgen.techniques.cam_trust import is_empty

    out = {}
    for method in results.methods:
        maps = results.for_method(method)
        if not maps:
            continue

        def mean(values: list[float]) -> float:
            return float(np.mean(values))

        out[method] = Faithfulness(
            method, len(maps), mean([h.deletion_auc for h in maps]), mean([h.insertion_auc for h in maps]),
            mean([h.random_deletion_auc for h in maps]), mean([h.random_insertion_auc for h in maps]),
            sum(h.deletion_auc < h.random_deletion_auc for h in maps), sum(is_empty(h.raw) for h in maps))
    return out


# Methods whose maps, each scaled to its own maximum, differ by less than this everywhere show the same thing.
SAME_MAPS_TOLERANCE = 1e-3


def same_maps(results: CamResults, tolerance: float = SAME_MAPS_TOLERANCE) -> list[tuple[tuple[str, ...], float]]:
    """Groups of methods whose maps are the same on every image and class (each map scaled to its maximum), with
    the largest difference seen: e.g. Grad-CAM, Grad-CAM++ and LayerCAM at a class-score layer."""

    def scaled(raw: np.ndarray) -> np.ndarray:
        peak = float(np.max(np.abs(raw))) if raw.size else 0.0
        return raw / peak if peak > 0 and np.isfinite(peak) else np.zeros_like(raw)

    maps = {m: [scaled(h.raw) for h in results.for_method(m)] for m in results.methods}
    groups: list[list[str]] = []
    largest: dict[str, float] = {}
    for method in results.methods:
        for group in groups:
            first = maps[group[0]]
            if len(first) != len(maps[method]) or any(a.shape != b.shape for a, b in zip(first, maps[method],
                                                                                          strict=True)):
                continue
            difference = max((float(np.max(np.abs(a - b))) for a, b in zip(first, maps[method], strict=True)),
                             default=0.0)
            if difference < tolerance:
                group.append(method)
                largest[group[0]] = max(largest.get(group[0], 0.0), difference)
                break
        else:
            groups.append([method])
    return [(tuple(group), largest[group[0]]) for group in groups if len(group) > 1]


@dataclass(frozen=True)
class CamInputs:
    """The images to explain, in the model's input space, and what to explain in each."""

    images: np.ndarray  # (N, H, W, C) model inputs
    targets: Sequence[Sequence[Target]]  # per image, the classes to explain
    baseline: np.ndarray  # (C,) the model input of a black pixel (Integrated Gradients' start)
    value_range: float  # span of valid model input values (SmoothGrad's noise scale)
    # (N, classes) float32 class probabilities of `images` when already known (the predictions'), shown beside
    # each map; else they come from the curves' first point or a forward pass.
    probabilities: np.ndarray | None = None


def explain(
    model: Any,
    inputs: CamInputs,
    methods: Sequence[str],
    layer: TargetLayer | None,
    to_probabilities: Callable[[np.ndarray], np.ndarray],
    settings: CamSettings,
    fresh_model: Any = None,
    sanity_images: int = 8,
    steps: int = DELETION_STEPS,
    progress: Callable[[str], None] | None = None,
) -> CamResults:
    """Every method's maps for every image of `inputs` and its targets, each with deletion / insertion AUC against
    a random map, and per method the model-randomisation check on the first `sanity_images` images (if
    `fresh_model`)."""
    from reportgen.techniques.predictions import final_layer

    units = output_units(model)
    head = score_head(model, final_layer(model), units)
    path = layer.path if layer else None

    def functions_for(network: Any, network_head: ScoreHead, curves_dtype: str = "float32") -> ModelFunctions:
        return ModelFunctions(network, network_head, path, to_probabilities, settings.batch_size, curves_dtype,
                              curve_batch_size=settings.curve_batch_size)

    images, targets, probabilities = inputs.images, inputs.targets, inputs.probabilities
    functions = functions_for(model, head, settings.curves_dtype)
    maps = compute_maps(functions, images, targets, methods, settings, inputs.baseline, inputs.value_range,
                        progress)

    heatmaps: list[Heatmap] = []
    if progress:
        progress(f"deletion and insertion curves: {len(images)} images x ({len(methods)} methods + a random map)")
    tracker = CurvesProgress(progress, len(images))  # a line every few seconds, however long the curves take
    for i, row in enumerate(targets):
        classes = [t.class_index for t in row]
        seed = seeds.derive(settings.seed, seeds.CAM_IMAGE, images[i])
        step = tracker.image(i)
        # The random baseline has each method's own resolution: deleting 4x4 blocks at random is not deleting
        # pixels at random, so layer-resolution and input-resolution (saliency) maps each get their own.
        shapes = list(dict.fromkeys(tuple(maps[method][i][0].shape) for method in methods))
        # One call for every map set of the image: the curves' ends (intact, deleted, blurred) are shared.
        sets = [random_maps(shape, len(row), seed) for shape in shapes] + [maps[method][i] for method in methods]
        curves = deletion_insertion(functions.curve_probabilities, images[i], [m for maps_ in sets for m in maps_],
                                    classes * len(sets), steps, seed, step)
        deletion_auc = curves.deletion_auc.reshape(len(sets), len(row))
        insertion_auc = curves.insertion_auc.reshape(len(sets), len(row))
        # The class probabilities shown are float32 whatever the curves' arithmetic.
        if probabilities is not None:
            probability = np.asarray(probabilities[i], np.float64)[classes]
        elif functions.curves_dtype == "float32":
            probability = curves.deletion[:len(row), 0]
        else:
            probability = functions.probabilities(images[i][None])[0, classes]
        for m, method in enumerate(methods, start=len(shapes)):
            noise = shapes.index(tuple(maps[method][i][0].shape))
            for t, target in enumerate(row):
                heatmaps.append(Heatmap(
                    method=method, image=i, target=target, raw=maps[method][i][t],
                    probability=float(probability[t]), deletion_auc=float(deletion_auc[m, t]),
                    insertion_auc=float(insertion_auc[m, t]), random_deletion_auc=float(deletion_auc[noise, t]),
                    random_insertion_auc=float(insertion_auc[noise, t]),
                ))

    sanity: dict[str, SanityCheck] = {}
    fresh_maps: dict[str, list[list[np.ndarray]]] = {}
    count = min(len(images), sanity_images) if fresh_model is not None else 0
    if count:
        if progress:
            progress(f"sanity check: maps of the freshly initialised model for {count} images")
        fresh_functions = functions_for(fresh_model, score_head(fresh_model, final_layer(fresh_model), units))
        fresh_maps = compute_maps(fresh_functions, images[:count], targets[:count], methods, settings,
                                  inputs.baseline, inputs.value_range)
        for method in methods:
            trained = [m for row in maps[method][:count] for m in row]
            fresh = [m for row in fresh_maps[method] for m in row]
            sanity[method] = sanity_check(method, trained, fresh)
    ordered = sorted(heatmaps, key=lambda h: list(methods).index(h.method))
    return CamResults(layer, tuple(methods), head, tuple(ordered), sanity, fresh_maps, count, steps,
                      settings.curves_dtype)
