"""The yardstick of the filter-pattern benchmarks: the tutorials' gradient-ascent loop, as a `search_patterns`
method (passed with `method=`). Not a report method: the report's methods are in
`reportgen.techniques.pattern_params`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reportgen.techniques.pattern_params import Jitter, PixelParameters


@dataclass(frozen=True)
class TutorialAscent(PixelParameters):
    """The tutorials' loop as the issue states it: from grey plus 20% noise (0.5 + U(-0.1, 0.1)), each step adds
    0.05 of the range times the gradient divided by its RMS, unclipped; the pattern is clipped to the valid range
    at the end. The benchmarks' yardstick, not a report method."""

    learning_rate: float = 0.05
    name: str = "tutorial"
    jitter: Jitter | None = None

    def finish(self, params: Any) -> Any:
        import tensorflow as tf

        return tf.clip_by_value(params, 0.0, 1.0)

    def update(self, params: Any, grad: Any, state: tuple[Any, Any], step: Any, total: Any,
               signs: Any) -> tuple[Any, tuple[Any, Any]]:
        import tensorflow as tf

        rms = tf.sqrt(tf.reduce_mean(tf.square(grad), axis=[1, 2, 3], keepdims=True))
        return params + self.learning_rate * grad / (rms + 1e-5), state
