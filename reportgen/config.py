"""Report options: one frozen dataclass, one name per option everywhere.

The CLI flag `--class-names`, the TOML config key `class-names` (or `class_names`) and the manifest field
`options["class-names"]` are the same option; `ReportOptions.class_names` holds it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reportgen import registry
from reportgen.errors import InputError
from reportgen.registry import names

ENGINES = names(registry.ENGINES)
PREPROCESS_MODES = names(registry.PREPROCESS_MODES)
DIRECTIONS = ("ascent", "descent")
DEFAULT_STEPS = 16  # the projected search passes the tutorials' 40-step loop in 16 (README: which search)
MAX_PATTERN_DIVERSITY = 16
# Each step is a forward and backward pass over every chosen filter's pattern: 1,000 steps are already 60 times the
# default search (which passes the tutorials' 40-step loop), and more only sharpens the texture while the run grows
# from seconds to hours.
MAX_STEPS = 1000
DEFAULT_CAM_METHODS = registry.DEFAULT_CAM_METHODS
# Decoding or resizing to width x height allocates that many pixels at once: a 20000x20000 image takes 1.2 GB per
# copy. Image files declaring more are skipped before decoding, and --image-size may not ask for more.
MAX_PIXELS = 80_000_000
# The pattern search runs every chosen filter's input, and its activations at each layer, in one batch: at 512 px
# a VGG-style first layer already holds gigabytes. Larger patterns show the same texture (see the README).
MAX_PATTERN_SIZE = 512
MAX_SEED = 2**32 - 1  # NumPy's and TensorFlow's seeds are 32-bit


# What a field's value is, on the command line and in a TOML config: one kind per field decides the flag's type, the
# config key's check and the parsing of both.
VALUE_KINDS = ("flag", "int", "str", "path", "choice", "list", "int_list", "size")


def option(default: Any, kind: str, help: str, *, choices: tuple[str, ...] = (), metavar: str | None = None) -> Any:
    """A `ReportOptions` field that is also a command-line flag and a config key: `kind` (one of `VALUE_KINDS`)
    says how its value is written and parsed, `help` is the flag's help text."""
    assert kind in VALUE_KINDS, kind
    return dataclasses.field(default=default, metadata={"kind": kind, "help": help, "choices": choices,
                                                        "metavar": metavar})


def option_fields() -> tuple[dataclasses.Field, ...]:
    """The fields of `ReportOptions`, each a flag and a config key (see `option`)."""
    return dataclasses.fields(ReportOptions)


@dataclass(frozen=True)
class ReportOptions:
    """Everything that changes what a report contains. Defaults are the CLI's defaults."""

    sections: tuple[str, ...] | None = option(
        None, "list", f"Comma-separated sections (default all): {', '.join(registry.section_names())}.")
    preprocess: str = option("auto", "choice", "; ".join(f"{c.name}: {c.summary}" for c in registry.PREPROCESS_MODES)
                             + ".", choices=PREPROCESS_MODES)
    image_size: tuple[int, int] | None = option(  # (width, height) for models without a fixed input size
        None, "size", "Input size for models without a fixed one.", metavar="WxH")
    seed: int = option(0, "int", "Seed for everything random.")
    title: str | None = option(None, "str", "Report title.")
    model_version: str | None = option(None, "str", "Model version shown in the report and report.json.")
    save_arrays: bool = option(False, "flag", "Also write arrays.npz with the raw arrays.")
    class_names: Path | None = option(  # noqa: RUF009 - `option` makes a dataclass field, as `field` does
        None, "path", "Text file with one class name per line, in output order.")
    weights: str | None = option(  # keras.applications names only: "imagenet", "none" or a weights file
        None, "str", "keras.applications names only: imagenet (cached file), none, or FILE.")
    output: str | None = option(None, "str", "Output layer to explain when the model has several.")
    unsafe: bool = option(  # allow Lambda layers (Keras safe mode off): only for trusted files
        False, "flag", "Allow Lambda layers (runs code stored in the file).")
    follow_links: bool = option(  # False (--no-follow-links): symbolic links inside IMAGES are skipped
        True, "flag", "Follow symbolic links inside IMAGES to image files (a link leaving IMAGES is named in a "
        "warning), or skip every link.")
    # feature maps
    layers: tuple[str, ...] = option((), "list", "Layers for the feature maps, filter patterns and weight figures: "
                                     "names, nested paths or globs.")
    batch_size: int | None = option(None, "int", "Images per forward pass (default: fit ~1 GiB).")
    # filter patterns
    filters: int = option(16, "int", "Filters per layer to visualise.")
    filter_indices: tuple[int, ...] | None = option(None, "int_list", "Exact filter indices, e.g. 0,3,7.")
    directions: tuple[str, ...] = option(DIRECTIONS, "list", f"Pattern directions: {', '.join(DIRECTIONS)}.")
    steps: int = option(DEFAULT_STEPS, "int", "Optimisation steps per pattern.")
    pattern_size: int | None = option(None, "int", "Pattern size in px for every layer (default: twice each "
                                      "layer's receptive field, at most the model's input and 128).")
    pattern_method: str = option(registry.DEFAULT_PATTERN_METHOD, "choice", "Filter-pattern parameterisation.",
                                 choices=names(registry.PATTERN_METHODS))
    pattern_diversity: int = option(1, "int", "Different patterns per filter and direction (a diversity penalty "
                                    "keeps them apart).", metavar="K")
    # predictions and class activation maps
    top_k: int = option(3, "int", "Predictions shown per image.")
    cam_methods: tuple[str, ...] = option(DEFAULT_CAM_METHODS, "list", "Class activation methods: "
                                          f"{', '.join(names(registry.CAM_METHODS))}.")
    # The default is `techniques.cams.target_layer.choose_target_layer`'s choice (7: its MIN_MAP_SIDE).
    cam_layer: str | None = option(None, "str", "Layer for class activation maps (default: the last block output "
                                   "with a map of at least 7x7, else the last one: a conv or the normalisation, "
                                   "activation or residual add after it, never a class-score conv; `reportgen layers` "
                                   "marks it).")
    classes: tuple[str, ...] = option((), "list", "Extra classes (names or indices) to explain per image.")
    # validation-set scale: every image feeds the dataset sections, a sample gets per-image figures
    detail: int = option(12, "int", "Images that get per-image figures (all images feed the dataset sections).")
    detail_images: tuple[str, ...] = option((), "list", "Pick the detail images by name or glob instead.")
    examples: int = option(6, "int", "Dataset examples per filter: the images that drive it most (and least).")
    # where the dataset pass runs: "local", or "ray" (Ray Data; a local Ray, or the cluster at ray_address)
    engine: str = option("local", "choice", "Where the dataset pass runs: this process, or Ray Data (pip install "
                         "'reportgen[ray]').", choices=ENGINES)
    ray_address: str | None = option(None, "str", "With --engine ray: join this cluster (default: start a local "
                                     "Ray).")
    workers: int | None = option(None, "int", "With --engine ray: workers, one model each (default: the CPUs).")

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
        if self.pattern_method not in names(registry.PATTERN_METHODS):
            choices = ", ".join(names(registry.PATTERN_METHODS))
            raise InputError(f"--pattern-method: {self.pattern_method!r} is not one of {choices}")
        for method in self.cam_methods:
            if method not in names(registry.CAM_METHODS):
                raise InputError(f"--cam-methods: {method!r} is not one of {', '.join(names(registry.CAM_METHODS))}")
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


def flag(field_name: str) -> str:
    """The command-line flag of a `ReportOptions` field: `class_names` -> `--class-names`."""
    return "--" + flag_name(field_name)


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


# The run flags a config file may also set (not report options: they change how a run behaves, not its report).
_RUN_FLAGS = ("force", "quiet")


def _kind(name: str) -> str | None:
    """The value kind of the option or run flag `name` (see `option`), None when there is no such key."""
    if name in _RUN_FLAGS:
        return "flag"
    return next((f.metadata["kind"] for f in option_fields() if f.name == name), None)


_NOT_CONFIG = {"output_dir": "give the output folder with -o/--output-dir", "debug": "pass --debug on the command "
               "line (reportgen --debug generate ...)", "config": "a config file cannot name another"}


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}.get(
        type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_config_value(path: Path, key: str, name: str, value: Any) -> Any:
    """`value` when it has the type of its flag, else InputError naming the key, the value and the type."""
    kind = _kind(name)
    if kind == "flag":
        ok, expected = isinstance(value, bool), "true or false (a TOML boolean, not a string)"
    elif kind == "int":
        ok, expected = _is_int(value), "an integer"
    elif kind in ("str", "path", "choice"):
        ok, expected = isinstance(value, str), "a string"
    elif kind == "list":  # "a,b" or ["a", "b"]
        ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        expected = 'a string such as "a,b" or an array of strings'
    elif kind == "int_list":
        ok = isinstance(value, str) or (isinstance(value, list) and all(_is_int(v) for v in value))
        expected = 'an array of integers such as [0, 3, 7] or a string "0,3,7"'
    else:  # "size"
        ok = isinstance(value, str) or _is_int(value) or (
            isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value))
        expected = 'a string "WIDTHxHEIGHT", one integer, or [width, height]'
    if not ok:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise InputError(f"--config: {path}: key {key!r} must be {expected}, got {shown} ({_type_name(value)})")
    if kind == "size" and isinstance(value, list):
        return f"{value[0]}x{value[1]}"
    if kind == "int_list" and isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def config_keys() -> frozenset[str]:
    """The keys a config file may set (field names: `class_names` for `class-names`), besides its [check] table."""
    return frozenset(f.name for f in option_fields()) | set(_RUN_FLAGS)


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


def options_from(values: dict[str, Any]) -> ReportOptions:
    """`ReportOptions` from field-named values as a flag or a config key gives them (lists as "a,b" or sequences,
    sizes as "WxH", paths as strings); None and unknown names are left out."""
    kwargs: dict[str, Any] = {}
    for field in option_fields():
        value = values.get(field.name)
        if value is None:
            continue
        kind, flag = field.metadata["kind"], "--" + flag_name(field.name)
        if kind in ("list", "int_list"):
            items = split_list(value)
            if not items:  # `--sections ",,,"` is a mistake, not "every section"
                raise InputError(f"{flag}: the list {value!r} is empty; give at least one value or leave {flag} out")
            value = items
            if kind == "int_list":
                try:
                    value = tuple(int(v) for v in value)
                except ValueError:
                    raise InputError(f"{flag}: expected integers such as 0,3,7, got {value!r}") from None
        elif kind == "size":
            value = parse_image_size(str(value))
        elif kind == "path":
            value = Path(value)
        kwargs[field.name] = value
    return ReportOptions(**kwargs)
