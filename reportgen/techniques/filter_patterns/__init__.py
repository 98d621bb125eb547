"""Filter patterns: for chosen filters of a conv layer, the inputs that drive the filter's mean activation up
(ascent) and down (descent).

All chosen filters of a layer, in both directions, are optimised together as one batch by one compiled step
(`tf.function`, traced once per layer; filter indices and directions are tensors, so nothing retraces). The model
runs only up to the layer (`graph.run_layers(..., stop_early=True)`), which also works for nested and loaded models.

What is optimised is the filter's mean output, the number reported (`activation`, re-evaluated in float32 on the
stored pattern). Where the filter is off everywhere (a ReLU gives exactly zero) that has no gradient, so there the
search follows the mean *pre-activation* (the layer's output before its own activation) instead: a filter that is
off on the starting image can still be switched on, and descent keeps pushing once the output reaches zero. (The
pre-activation alone is no substitute: descent would buy a lower mean with bright spikes, raising the real output.)
A filter is *dead* when even its ascent pattern leaves its output at zero everywhere, or when the search cannot
move it at all (zero gradient).

The package: `targets` (which layers, whose output), `sizing` (canvas sizes, filters, arithmetic), `schedule` (the
cost model and the grouping of layers into searches), `search` (the compiled step and its driver) and `scorecard`
(how far each pattern can be trusted). Their public names are handed on here.
"""

from reportgen.techniques.filter_patterns.schedule import SearchPlan, matmul_rate, plan_searches, shared_searches
from reportgen.techniques.filter_patterns.scorecard import (
    FLAG_ROBUST,
    FLAG_SATURATION,
    FLAG_SPECIFICITY,
    ROBUST_VIEWS,
    SATURATION_MARGIN,
    Scorecard,
    robust_share,
    robust_views,
    score_layer,
    score_layers,
    score_patterns,
    view_transform,
)
from reportgen.techniques.filter_patterns.search import (
    DEAD_LEVEL,
    DirectionPatterns,
    LayerPatterns,
    PatternJob,
    PatternSettings,
    channel_means,
    filter_responses,
    search_layers,
    search_patterns,
)
from reportgen.techniques.filter_patterns.sizing import (
    DEFAULT_PATTERN_SIZE,
    MIN_LAYER_SIZE,
    choose_filters,
    layer_sizes,
    pattern_size,
    search_dtype,
    search_size,
)
from reportgen.techniques.filter_patterns.targets import (
    PatternTarget,
    choose_targets,
    first_conv,
    layer_consumers,
    pattern_target,
    pattern_targets,
)

__all__ = [
    "DEAD_LEVEL",
    "DEFAULT_PATTERN_SIZE",
    "DirectionPatterns",
    "FLAG_ROBUST",
    "FLAG_SATURATION",
    "FLAG_SPECIFICITY",
    "LayerPatterns",
    "MIN_LAYER_SIZE",
    "PatternJob",
    "PatternSettings",
    "PatternTarget",
    "ROBUST_VIEWS",
    "SATURATION_MARGIN",
    "Scorecard",
    "SearchPlan",
    "channel_means",
    "choose_filters",
    "choose_targets",
    "filter_responses",
    "first_conv",
    "layer_consumers",
    "layer_sizes",
    "matmul_rate",
    "pattern_size",
    "pattern_target",
    "pattern_targets",
    "plan_searches",
    "robust_share",
    "robust_views",
    "score_layer",
    "score_layers",
    "score_patterns",
    "search_dtype",
    "search_layers",
    "search_patterns",
    "search_size",
    "shared_searches",
    "view_transform",
]
