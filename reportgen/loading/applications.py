"""`keras.applications` models by name (`vgg16`, `xception`, ...), offline.

Keras downloads ImageNet weights on first use. Reportgen never downloads anything: a name with
`--weights imagenet` works when Keras's cache already holds the file, and otherwise stops with a message that
says which file to fetch and where to put it.
"""

from __future__ import annotations

import contextlib
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
    def __init__(self, url: str, filename: str) -> None:
        super().__init__(url)
        self.url = url
        self.filename = filename


@contextlib.contextmanager
def _no_downloads() -> Iterator[None]:
    """Make Keras's `get_file` fail at once instead of downloading; a cached file is still used."""
    from keras.src.utils import file_utils

    original = file_utils.urlretrieve

    def refuse(url: str, filename: str, *args: Any, **kwargs: Any) -> None:
        raise _DownloadRefused(url, filename)

    file_utils.urlretrieve = refuse
    try:
        yield
    finally:
        file_utils.urlretrieve = original


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
    try:
        with _no_downloads(), seeds.keras_weights(seed, seeds.APPLICATION_WEIGHTS):
            model = constructor(**kwargs)
    except _DownloadRefused as refused:
        # Keras chose the cache path (it reads KERAS_HOME once, at import): name exactly the file it looked for.
        raise ModelLoadError(
            f"{app.name}: the ImageNet weights are not cached and reportgen never downloads. "
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
