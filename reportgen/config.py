"""Report options: one frozen dataclass, one name per option everywhere.

The CLI flag `--class-names`, the TOML config key `class-names` (or `class_names`) and the manifest field
`options["class-names"]` are the same option; `ReportOptions.class_names` holds it.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reportgen.errors import InputError

PREPROCESS_MODES = ("auto", "scale", "none", "caffe", "tf", "torch")
DIRECTIONS = ("ascent", "descent")
PATTERN_METHODS = ("logit", "fourier", "pixel", "maco")
DEFAULT_STEPS = 20  # the logit search reaches in 20 steps what the earlier default (fourier) did in 40
MAX_PATTERN_DIVERSITY = 16
CAM_METHODS = ("gradcam", "gradcam++", "layercam", "scorecam", "saliency", "smoothgrad", "integrated_gradients")
DEFAULT_CAM_METHODS = ("gradcam", "gradcam++", "layercam")


@dataclass(frozen=True)
class ReportOptions:
    """Everything that changes what a report contains. Defaults are the CLI's defaults."""

    sections: tuple[str, ...] | None = None  # None: every section reportgen knows
    preprocess: str = "auto"
    image_size: tuple[int, int] | None = None  # (width, height) for models without a fixed input size
    seed: int = 0
    title: str | None = None
    model_version: str | None = None
    save_arrays: bool = False
    class_names: Path | None = None
    weights: str | None = None  # keras.applications names only: "imagenet", "none" or a weights file
    output: str | None = None  # output layer to explain when a model has several
    unsafe: bool = False  # allow Lambda layers (Keras safe mode off): only for trusted files
    # feature maps
    layers: tuple[str, ...] = ()
    batch_size: int | None = None
    # filter patterns
    filters: int = 16
    filter_indices: tuple[int, ...] | None = None
    directions: tuple[str, ...] = DIRECTIONS
    steps: int = DEFAULT_STEPS
    pattern_size: int | None = None
    pattern_method: str = "logit"
    pattern_diversity: int = 1
    # predictions and class activation maps
    top_k: int = 3
    cam_methods: tuple[str, ...] = DEFAULT_CAM_METHODS
    cam_layer: str | None = None
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.preprocess not in PREPROCESS_MODES:
            raise InputError(f"--preprocess: {self.preprocess!r} is not one of {', '.join(PREPROCESS_MODES)}")
        for direction in self.directions:
            if direction not in DIRECTIONS:
                raise InputError(f"--directions: {direction!r} is not one of {', '.join(DIRECTIONS)}")
        if self.pattern_method not in PATTERN_METHODS:
            choices = ", ".join(PATTERN_METHODS)
            raise InputError(f"--pattern-method: {self.pattern_method!r} is not one of {choices}")
        for method in self.cam_methods:
            if method not in CAM_METHODS:
                raise InputError(f"--cam-methods: {method!r} is not one of {', '.join(CAM_METHODS)}")
        minimums = (("--top-k", self.top_k, 1), ("--filters", self.filters, 1), ("--steps", self.steps, 0))
        for name, value, low in minimums:
            if value < low:
                raise InputError(f"{name}: must be at least {low}, got {value}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"--batch-size: must be at least 1, got {self.batch_size}")
        if not 1 <= self.pattern_diversity <= MAX_PATTERN_DIVERSITY:
            raise InputError(f"--pattern-diversity: must be 1-{MAX_PATTERN_DIVERSITY}, got {self.pattern_diversity}")
        if self.pattern_size is not None and self.pattern_size < 8:
            raise InputError(f"--pattern-size: must be at least 8 pixels, got {self.pattern_size}")
        if self.image_size is not None and min(self.image_size) < 1:
            raise InputError(f"--image-size: width and height must be positive, got {self.image_size}")

    def to_manifest(self) -> dict[str, Any]:
        """The options as report.json stores them, keyed by flag name."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[flag_name(f.name)] = value
        return out


def flag_name(field_name: str) -> str:
    """`class_names` -> `class-names`."""
    return field_name.replace("_", "-")


def parse_image_size(text: str) -> tuple[int, int]:
    """Parse `WxH` (or a single number for a square) into (width, height)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        numbers = numbers * 2
    if len(numbers) != 2 or min(numbers) < 1:
        raise InputError(f"--image-size: expected WIDTHxHEIGHT such as 224x224, got {text!r}")
    return numbers[0], numbers[1]


def split_list(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Accept `a,b,c`, a list, or repeated values; drop empties and whitespace."""
    items = [text] if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in items:
        out.extend(part.strip() for part in str(item).split(",") if part.strip())
    return tuple(out)


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config; keys are flag names (`class-names` or `class_names`). Returns field-named values."""
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise InputError(f"--config: {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"--config: {path} is not a readable TOML file ({exc})") from None
    known = {f.name for f in dataclasses.fields(ReportOptions)} | {"force", "quiet", "output_dir", "debug"}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in known:
            raise InputError(f"--config: {path} has an unknown key {key!r}; keys are the flags' names, e.g. 'seed'")
        values[name] = value
    return values


@dataclass(frozen=True)
class RunSettings:
    """How a run behaves, as opposed to what the report holds."""

    force: bool = False
    quiet: bool = False
    extra_warnings: tuple[str, ...] = field(default=())
