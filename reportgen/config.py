"""Report options: one frozen dataclass, one name per option everywhere.

The CLI flag `--class-names`, the TOML config key `class-names` (or `class_names`) and the manifest field
`options["class-names"]` are the same option; `ReportOptions.class_names` holds it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reportgen.errors import InputError

ENGINES = ("local", "ray")
PREPROCESS_MODES = ("auto", "scale", "none", "caffe", "tf", "torch")
DIRECTIONS = ("ascent", "descent")
PATTERN_METHODS = ("projected", "logit", "fourier", "pixel", "maco")
DEFAULT_STEPS = 16  # the projected search passes the tutorials' 40-step loop in 16 (README: which search)
MAX_PATTERN_DIVERSITY = 16
# Each step is a forward and backward pass over every chosen filter's pattern: 1,000 steps are already 60 times the
# default search (which passes the tutorials' 40-step loop), and more only sharpens the texture while the run grows
# from seconds to hours.
MAX_STEPS = 1000
CAM_METHODS = ("gradcam", "gradcam++", "layercam", "scorecam", "saliency", "smoothgrad", "integrated_gradients")
DEFAULT_CAM_METHODS = ("gradcam", "gradcam++", "layercam")
# Decoding or resizing to width x height allocates that many pixels at once: a 20000x20000 image takes 1.2 GB per
# copy. Image files declaring more are skipped before decoding, and --image-size may not ask for more.
MAX_PIXELS = 80_000_000
# The pattern search runs every chosen filter's input, and its activations at each layer, in one batch: at 512 px
# a VGG-style first layer already holds gigabytes. Larger patterns show the same texture (see the README).
MAX_PATTERN_SIZE = 512
MAX_SEED = 2**32 - 1  # NumPy's and TensorFlow's seeds are 32-bit


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
    follow_links: bool = True  # False (--no-follow-links): symbolic links inside IMAGES are skipped, not followed
    # feature maps
    layers: tuple[str, ...] = ()
    batch_size: int | None = None
    # filter patterns
    filters: int = 16
    filter_indices: tuple[int, ...] | None = None
    directions: tuple[str, ...] = DIRECTIONS
    steps: int = DEFAULT_STEPS
    pattern_size: int | None = None
    pattern_method: str = "projected"
    pattern_diversity: int = 1
    # predictions and class activation maps
    top_k: int = 3
    cam_methods: tuple[str, ...] = DEFAULT_CAM_METHODS
    cam_layer: str | None = None
    classes: tuple[str, ...] = ()
    # validation-set scale: every image feeds the dataset sections, a sample gets per-image figures
    detail: int = 12
    detail_images: tuple[str, ...] = ()
    examples: int = 6
    # where the dataset pass runs: "local", or "ray" (Ray Data; a local Ray, or the cluster at ray_address)
    engine: str = "local"
    ray_address: str | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise InputError(f"--engine: {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise InputError(f"--workers: must be a positive integer, got {self.workers!r}")
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
        minimums = (("--top-k", self.top_k, 1), ("--filters", self.filters, 1), ("--steps", self.steps, 0),
                    ("--detail", self.detail, 1), ("--examples", self.examples, 1))
        for name, value, low in minimums:
            if value < low:
                raise InputError(f"{name}: must be at least {low}, got {value}")
        if self.steps > MAX_STEPS:
            raise InputError(f"--steps: at most {MAX_STEPS} (each step is a pass over every pattern; the default "
                             f"{DEFAULT_STEPS} already converges), got {self.steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"--batch-size: must be at least 1, got {self.batch_size}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise InputError(f"--seed: must be an integer from 0 to {MAX_SEED} (2^32 - 1), got {self.seed!r}")
        if not 1 <= self.pattern_diversity <= MAX_PATTERN_DIVERSITY:
            raise InputError(f"--pattern-diversity: must be 1-{MAX_PATTERN_DIVERSITY}, got {self.pattern_diversity}")
        if self.pattern_size is not None and self.pattern_size < 8:
            raise InputError(f"--pattern-size: must be at least 8 pixels, got {self.pattern_size}")
        if self.pattern_size is not None and self.pattern_size > MAX_PATTERN_SIZE:
            raise InputError(f"--pattern-size: at most {MAX_PATTERN_SIZE} pixels (a pattern is a texture: larger "
                             f"ones show the same at many times the memory), got {self.pattern_size}")
        if self.image_size is not None:
            if min(self.image_size) < 1:
                raise InputError(f"--image-size: width and height must be positive, got {self.image_size}")
            width, height = self.image_size
            if width * height > MAX_PIXELS:
                raise InputError(f"--image-size: {width}x{height} is {width * height / 1e6:.0f} megapixels, over the "
                                 f"{MAX_PIXELS // 1_000_000}-megapixel limit for images; choose a smaller size")
        for flag, items in (("--sections", self.sections), ("--cam-methods", self.cam_methods),
                            ("--directions", self.directions)):
            if items is not None and not items:
                raise InputError(f"{flag}: the list is empty; give at least one value or leave {flag} out")

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


# What each config key takes, as its flag does: a TOML string is never a boolean, a boolean never a number.
_BOOL_KEYS = {"save_arrays", "unsafe", "follow_links", "force", "quiet"}
_INT_KEYS = {"seed", "batch_size", "filters", "steps", "pattern_size", "top_k", "pattern_diversity", "detail",
             "examples", "workers"}
_STR_KEYS = {"preprocess", "title", "model_version", "weights", "output", "cam_layer", "pattern_method",
             "class_names", "engine", "ray_address"}
_LIST_KEYS = {"sections", "layers", "directions", "cam_methods", "classes", "detail_images"}  # "a,b" or ["a", "b"]
_NOT_CONFIG = {"output_dir": "give the output folder with -o/--output-dir", "debug": "pass --debug on the command "
               "line (reportgen --debug generate ...)", "config": "a config file cannot name another"}


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}.get(
        type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_config_value(path: Path, key: str, name: str, value: Any) -> Any:
    """`value` when it has the type of its flag, else InputError naming the key, the value and the type."""
    if name in _BOOL_KEYS:
        ok, expected = isinstance(value, bool), "true or false (a TOML boolean, not a string)"
    elif name in _INT_KEYS:
        ok, expected = _is_int(value), "an integer"
    elif name in _STR_KEYS:
        ok, expected = isinstance(value, str), "a string"
    elif name in _LIST_KEYS:
        ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        expected = 'a string such as "a,b" or an array of strings'
    elif name == "filter_indices":
        ok = isinstance(value, str) or (isinstance(value, list) and all(_is_int(v) for v in value))
        expected = 'an array of integers such as [0, 3, 7] or a string "0,3,7"'
    elif name == "image_size":
        ok = isinstance(value, str) or _is_int(value) or (
            isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value))
        expected = 'a string "WIDTHxHEIGHT", one integer, or [width, height]'
    else:  # pragma: no cover - every known key is listed above
        ok, expected = True, ""
    if not ok:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise InputError(f"--config: {path}: key {key!r} must be {expected}, got {shown} ({_type_name(value)})")
    if name == "image_size" and isinstance(value, list):
        return f"{value[0]}x{value[1]}"
    if name == "filter_indices" and isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def config_keys() -> frozenset[str]:
    """The keys a config file may set (field names: `class_names` for `class-names`), besides its [check] table."""
    return frozenset(f.name for f in dataclasses.fields(ReportOptions)) | {"force", "quiet"}


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config; keys are flag names (`class-names` or `class_names`). Returns field-named values, each
    checked to have its flag's type (InputError naming the key otherwise)."""
    from reportgen.userfiles import read_toml_file

    raw = read_toml_file(path, "--config", "a TOML file of options, a few lines long")
    known = config_keys()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name == "check" and isinstance(value, dict):  # the rules of `--check` (reportgen.check reads them)
            continue
        if name in _NOT_CONFIG:
            raise InputError(f"--config: {path}: key {key!r} cannot be set in a config file; {_NOT_CONFIG[name]}")
        if name not in known:
            raise InputError(f"--config: {path} has an unknown key {key!r}; keys are the flags' names, e.g. 'seed'")
        values[name] = _check_config_value(path, key, name, value)
    return values
