"""Load a model from a `.keras` file, a legacy `.h5` file, or a `keras.applications` name."""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reportgen.errors import ModelLoadError
from reportgen.loading.applications import build_application, detect_family, find_application
from reportgen.loading.legacy_h5 import load_legacy_h5, read_model_config

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to analyse, and where it came from."""

    model: Any  # keras.Model
    source: str  # the file path, or "keras.applications.VGG16"
    file_format: str  # "keras", "h5", "h5-legacy", "application", "in-memory"
    sha256: str | None
    family: str | None  # keras.applications family the model is (or is built on), for preprocessing
    input_shape: tuple[int | None, int | None, int]  # (height, width, channels)
    output_name: str | None = None  # the output explained when the model has several

    @property
    def name(self) -> str:
        return str(self.model.name)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(
    spec: str | Path | Any,
    weights: str | None = None,
    image_size: tuple[int, int] | None = None,
    output: str | None = None,
    unsafe: bool = False,
    seed: int = 0,
) -> LoadedModel:
    """Load `spec`: a model file, a keras.applications name (random weights drawn from `seed` with
    `weights="none"`), or a `keras.Model` already in memory."""
    import keras

    if isinstance(spec, keras.Model):
        return _finish(spec, "in-memory", "in-memory", None, output)
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        raise ModelLoadError(_saved_model_message(path) if (path / "saved_model.pb").exists() else (
            f"{path} is a folder, not a model file: give a .keras or .h5 file or a keras.applications name"
        ))
    if path.exists() and not path.is_file():  # a FIFO, a device (or a link to one): never opened
        raise ModelLoadError(f"{path} is not a regular file (a FIFO, a device or a link to one): give a .keras or "
                             ".h5 model file")
    if path.is_file():
        if weights is not None:
            raise ModelLoadError("--weights only applies to keras.applications names such as vgg16")
        return _load_file(path, output, unsafe)
    app = find_application(text)
    if app is not None:
        input_shape = (image_size[1], image_size[0], 3) if image_size else None
        model = build_application(app, weights, input_shape, seed)
        return _finish(model, f"keras.applications.{app.constructor}", "application", None, output, app.family)
    check_model_path(text)
    raise ModelLoadError(
        f"{text} is neither a model file nor a keras.applications name (such as vgg16, resnet50, xception)"
    )


def check_model_path(text: str) -> None:
    """MODEL given as a path (a model suffix, or a folder separator: never a keras.applications name) that does not
    exist is an error, answered without Keras (the command line checks it before importing TensorFlow)."""
    if Path(text).exists():
        return
    if Path(text).suffix.lower() in MODEL_SUFFIXES or "/" in text or "\\" in text:
        raise ModelLoadError(f"{text} does not exist: give the path of a .keras or .h5 model file")


def _saved_model_message(path: Path) -> str:
    return (
        f"{path} is a TensorFlow SavedModel folder, which Keras 3 cannot open as a model with layers. Convert it "
        "once with tf.keras 2 (pip install tf-keras): "
        f"python -c \"import tf_keras; tf_keras.models.load_model('{path}').save('model.h5')\" "
        "and pass model.h5 (or re-save it from your training code with model.save('model.keras'))"
    )


def _load_file(path: Path, output: str | None, unsafe: bool) -> LoadedModel:
    import keras

    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise ModelLoadError(f"{path}: unsupported model file type {suffix or '(none)'}; give a .keras or .h5 file")
    try:
        sha = file_sha256(path)
    except OSError as exc:
        raise ModelLoadError(f"{path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    if suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise ModelLoadError(f"{path} could not be loaded as a Keras model: it is not a .keras file (a .keras "
                                 "file is a zip archive); the file is damaged or of another type")
        try:
            model = keras.models.load_model(path, compile=False, safe_mode=not unsafe)
        except Exception as exc:
            raise ModelLoadError(_load_failure(path, exc)) from None
        return _finish(model, str(path), "keras", sha, output)
    try:
        config = read_model_config(path)
    except OSError as exc:
        raise ModelLoadError(f"{path} is not a readable HDF5 file ({exc})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError and -EncodeError: ValueErrors
        raise ModelLoadError(f"{path}: the model architecture stored in the file (model_config) is not JSON or "
                             f"not UTF-8 ({str(exc).splitlines()[0][:200]}); the file is damaged, save the model "
                             "again") from None
    if config is not None and not isinstance(config, dict):
        raise ModelLoadError(f"{path}: the model architecture stored in the file (model_config) is not a JSON "
                             "object; the file is damaged, save the model again")
    if config is None:
        raise ModelLoadError(
            f"{path} holds weights only, no architecture. Build the model in code, call "
            "model.load_weights(...) and save it whole with model.save('model.keras')"
        )
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not unsafe)
        file_format = "h5"
    except Exception as first:
        # Keras 3 fails on several tf.keras 2 files (nested base models); rebuild them ourselves.
        try:
            model = load_legacy_h5(path, safe_mode=not unsafe)
        except Exception as exc:
            raise ModelLoadError(_load_failure(path, exc, first)) from None
        file_format = "h5-legacy"
    return _finish(model, str(path), file_format, sha, output)


# How Keras names a class it cannot find: "Could not locate class 'MyLayer'" (.keras), "Unknown layer:
# 'package>MyLayer'" (.h5), "Unknown activation function: 'swishy'".
_MISSING_CLASS = re.compile(r"(?:Could not locate (?:class|function)|Unknown [a-z ]+?:) '([^']+)'")


def _load_failure(path: Path, exc: Exception, *others: Exception) -> str:
    texts = [str(e) for e in (exc, *others)]
    # Checked before Lambda, whose name it contains: --unsafe does not help here, so it must not be the advice.
    if any("TFOpLambda" in t or "SlicingOpLambda" in t for t in texts):
        return (
            f"{path} calls TensorFlow operations directly on Keras tensors (tf.keras 2 saves them as TFOpLambda "
            "layers, e.g. tf_keras.applications' RegNets), which Keras 3 cannot rebuild. Replace those operations "
            "by Keras layers in the model's code and save it again"
        )
    if any("Lambda" in t or "safe_mode" in t for t in texts):
        return (
            f"{path} contains a Lambda layer, which Keras refuses to load in safe mode because it runs stored "
            "code. If you trust the file, pass --unsafe"
        )
    for text in texts:
        match = _MISSING_CLASS.search(text)
        if match:
            name = match.group(1)
            return (
                f"{path} uses the custom class {name!r}, which is not defined here: reportgen's command line loads "
                "built-in Keras layers only. From Python, import the module that defines it (decorated with "
                "@keras.saving.register_keras_serializable()) and pass the model to reportgen.generate_report"
            )
    # Keras wraps the cause ("... could not be deserialized properly ... Exception encountered: <cause>"): the
    # cause is what a user can act on, the wrapper's first line is not.
    text = str(exc).strip()
    if "Exception encountered:" in text:
        text = text.rsplit("Exception encountered:", 1)[1].strip()
    line = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"{path} could not be loaded as a Keras model: {line[:500]}"


def _finish(
    model: Any, source: str, file_format: str, sha: str | None, output: str | None, family: str | None = None
) -> LoadedModel:
    import keras

    inputs = _model_inputs(model)
    if len(inputs) != 1:
        raise ModelLoadError(f"{source}: the model has {len(inputs)} inputs; reportgen explains single-image models")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4:
        raise ModelLoadError(
            f"{source}: the input has shape {shape}; reportgen needs images (batch, height, width, channels)"
        )
    for layer in _all_layers(model):
        if getattr(layer, "data_format", "channels_last") == "channels_first":
            raise ModelLoadError(
                f"{source}: layer {layer.name} is channels_first; reportgen supports channels_last models"
            )
    outputs = list(getattr(model, "outputs", None) or [])
    output_name = None
    if len(outputs) == 1 and output is not None:
        only = getattr(outputs[0], "_keras_history", [None])[0]
        if output != getattr(only, "name", None):
            raise ModelLoadError(f"--output: {source} has a single output ({getattr(only, 'name', '?')}); leave "
                                 "--output out")
    if len(outputs) > 1:
        names = [getattr(t, "_keras_history", [None])[0].name for t in outputs]
        if output is None:
            raise ModelLoadError(
                f"{source}: the model has several outputs ({', '.join(names)}); choose one with --output"
            )
        if output not in names:
            raise ModelLoadError(f"--output: {output!r} is not an output of {source}; outputs: {', '.join(names)}")
        model = keras.Model(model.inputs, outputs[names.index(output)], name=model.name)
        output_name = output
    if family is None:
        family = detect_family(model.name) or next(
            (f for layer in model.layers if (f := detect_family(layer.name)) and hasattr(layer, "layers")), None
        )
    return LoadedModel(
        model=model,
        source=source,
        file_format=file_format,
        sha256=sha,
        family=family,
        input_shape=(shape[1], shape[2], int(shape[3])),
        output_name=output_name,
    )


def _model_inputs(model: Any) -> list[Any]:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if inputs:
        return list(inputs)
    raise ModelLoadError(
        f"{model.name}: the model has no defined input shape; save it after building it with an Input"
    )


def _all_layers(model: Any) -> list[Any]:
    from reportgen.graph import walk_layers

    return [node.layer for node in walk_layers(model)]
