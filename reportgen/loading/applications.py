"""`keras.applications` models by name (`vgg16`, `xception`, ...), offline.

Keras downloads ImageNet weights on first use. Reportgen never downloads anything: a name with
`--weights imagenet` works when Keras's cache already holds the file, and otherwise stops with a message that
says which file to fetch and where to put it.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reportgen import seeds
from reportgen.errors import ModelLoadError

# keras.applications family -> the preprocessing its preprocess_input applies.
FAMILY_PREPROCESS = {
    "vgg16": "caffe",
    "vgg19": "caffe",
    "resnet": "caffe",
    "resnet_v2": "tf",
    "inception_v3": "tf",
    "inception_resnet_v2": "tf",
    "xception": "tf",
    "mobilenet": "tf",
    "mobilenet_v2": "tf",
    "nasnet": "tf",
    "densenet": "torch",
    # These models rescale inside the network and take raw 0-255 pixels.
    "mobilenet_v3": "none",
    "efficientnet": "none",
    "efficientnet_v2": "none",
    "convnext": "none",
    "regnet": "none",
}


@dataclass(frozen=True)
class Application:
    """A keras.applications constructor."""

    name: str  # as the user types it: "vgg16"
    constructor: str  # as keras spells it: "VGG16"
    family: str  # the module: "vgg16", "resnet_v2"

    @property
    def preprocess(self) -> str:
        return FAMILY_PREPROCESS.get(self.family, "scale")


def known_applications() -> dict[str, Application]:
    """Every model constructor keras.applications offers, by lower-case name."""
    import keras

    # The constructors live at the top of keras.applications; a family's submodule may export only its
    # preprocess_input and decode_predictions (keras.applications.mobilenet_v3 does), so it cannot be the source.
    apps: dict[str, Application] = {}
    for constructor in dir(keras.applications):
        function = getattr(keras.applications, constructor)
        if constructor[:1].isupper() and callable(function):
            name = constructor.lower()
            apps.setdefault(name, Application(name, constructor, constructor_family(function)))
    return apps


def constructor_family(constructor: Any) -> str:
    """The family of a keras.applications constructor: the last part of the module that defines it
    (`keras.src.applications.mobilenet_v3` -> "mobilenet_v3")."""
    return getattr(constructor, "__module__", "").rpartition(".")[2]


def find_application(name: str) -> Application | None:
    """The application called `name` (case and `-`/`_` ignored), or None."""
    key = name.lower().replace("-", "").replace("_", "")
    for app_name, app in known_applications().items():
        if app_name.replace("_", "") == key:
            return app
    return None


def detect_family(model_name: str) -> str | None:
    """Guess the keras.applications family from a (base) model's name, e.g. `vgg16` or `mobilenetv2_1.00_224`."""
    name = model_name.lower()
    prefixes = [
        ("inception_resnet_v2", "inception_resnet_v2"),
        ("inception_v3", "inception_v3"),
        ("xception", "xception"),
        ("vgg16", "vgg16"),
        ("vgg19", "vgg19"),
        ("resnet50v2", "resnet_v2"),
        ("resnet101v2", "resnet_v2"),
        ("resnet152v2", "resnet_v2"),
        ("resnet50", "resnet"),
        ("resnet101", "resnet"),
        ("resnet152", "resnet"),
        ("mobilenetv3", "mobilenet_v3"),
        ("mobilenetv2", "mobilenet_v2"),
        ("mobilenet", "mobilenet"),
        ("densenet", "densenet"),
        ("nasnet", "nasnet"),
        ("efficientnetv2", "efficientnet_v2"),
        ("efficientnet", "efficientnet"),
        ("convnext", "convnext"),
        ("regnet", "regnet"),
    ]
    for prefix, family in prefixes:
        if name.startswith(prefix):
            return family
    return None


class _DownloadRefused(Exception):
    def __init__(self, url: str, filename: str, state: str = "are not cached") -> None:
        super().__init__(url)
        self.url = url
        self.filename = filename
        self.state = state  # what is wrong with the weights: "are not cached", "are cached but damaged ..."


def _keras_cache_path(file_utils: Any, fname: str, cache_subdir: str, cache_dir: str | None) -> Path:
    """Where Keras's `get_file` keeps `fname`: KERAS_HOME (read once, at Keras's import) or ~/.keras, else
    /tmp/.keras when that is not writable, then `cache_subdir` ("models")."""
    base = Path(cache_dir if cache_dir is not None else file_utils.config.keras_home()).expanduser()
    if not os.access(base, os.W_OK):  # as get_file decides
        base = Path("/tmp" if Path("/tmp").is_dir() else tempfile.gettempdir(), ".keras")
    return base / cache_subdir / fname


@contextlib.contextmanager
def _no_downloads(cached: list[tuple[str, str]]) -> Iterator[None]:
    """Within the block Keras's `get_file` gives a cached file, checked against its hash as Keras checks it (and
    appends its (URL, path) to `cached`), and raises `_DownloadRefused` for one the cache lacks or holds damaged,
    before it prints anything (Keras prints "Downloading data from ..." and then downloads). Its `urlretrieve`
    refuses too, whatever the path."""
    from keras.src.utils import file_utils

    get_file, urlretrieve = file_utils.get_file, file_utils.urlretrieve
    signature = inspect.signature(get_file)

    def cached_only(*args: Any, **kwargs: Any) -> str:
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        given = call.arguments
        if given["untar"] or given["extract"] or given["force_download"] or not given["fname"]:
            return get_file(*args, **kwargs)  # never how an application asks; `refuse` below still holds
        path = _keras_cache_path(file_utils, str(given["fname"]), given["cache_subdir"], given["cache_dir"])
        if not path.is_file():
            raise _DownloadRefused(given["origin"], str(path))
        file_hash, algorithm = given["file_hash"], given["hash_algorithm"]
        if file_hash is None and given["md5_hash"] is not None:
            file_hash, algorithm = given["md5_hash"], "md5"
        if file_hash is not None and not file_utils.validate_file(str(path), file_hash, algorithm=algorithm):
            raise _DownloadRefused(given["origin"], str(path), "are cached but damaged or of another version (their "
                                   "hash is not the one Keras expects)")
        cached.append((str(given["origin"]), str(path)))
        return str(path)

    def refuse(url: str, filename: str, *args: Any, **kwargs: Any) -> None:
        raise _DownloadRefused(url, filename)

    file_utils.get_file, file_utils.urlretrieve = cached_only, refuse
    try:
        yield
    finally:
        file_utils.get_file, file_utils.urlretrieve = get_file, urlretrieve


def build_application(app: Application, weights: str | None, input_shape: tuple[int, int, int] | None,
                      seed: int = 0) -> Any:
    """Instantiate `app` with `weights` = "imagenet", "none" (random, drawn from `seed`) or a weights file, without
    downloading."""
    import keras

    constructor = getattr(keras.applications, app.constructor)
    kwargs: dict[str, Any] = {}
    if input_shape is not None:
        kwargs["input_shape"] = input_shape
    choice = (weights or "imagenet").strip()
    weights_file: Path | None = None
    if choice.lower() == "none":
        kwargs["weights"] = None
    elif choice.lower() == "imagenet":
        kwargs["weights"] = "imagenet"
    else:
        weights_file = Path(choice)
        if not weights_file.is_file():
            raise ModelLoadError(f"--weights: {choice} is neither 'imagenet', 'none' nor an existing weights file")
        kwargs["weights"] = None
    # Random weights are part of the model: seeded, so the same --seed gives the same model and the same report.
    cached: list[tuple[str, str]] = []
    try:
        try:
            with _no_downloads(cached), seeds.keras_weights(seed, seeds.APPLICATION_WEIGHTS):
                model = constructor(**kwargs)
        except Exception as exc:
            if not cached or isinstance(exc, _DownloadRefused):
                raise
            # Some families give Keras no hash to check their file by (MobileNetV2): a damaged one fails to load.
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise _DownloadRefused(*cached[-1], f"are cached but cannot be loaded ({reason})") from None
    except _DownloadRefused as refused:
        # The path Keras looks in (it reads KERAS_HOME once, at import): name exactly the file to put there.
        raise ModelLoadError(
            f"{app.name}: the ImageNet weights {refused.state} and reportgen never downloads. "
            f"Fetch {refused.url} to {refused.filename} (or pass --weights FILE), or use --weights none for "
            "random weights"
        ) from None
    except ValueError as exc:
        raise ModelLoadError(f"{app.name}: {exc}") from None
    if weights_file is not None:
        try:
            model.load_weights(str(weights_file))
        except Exception as exc:  # Keras raises many types for a mismatched file
            raise ModelLoadError(f"--weights: {weights_file} does not fit {app.name}: {exc}") from None
    return model
