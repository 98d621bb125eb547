"""Legacy `.h5` models written by tf.keras 2, including ones Keras 3's loader cannot read.

tf.keras 2 stores a nested Functional model's outputs as a one-element list (`output_layers: [[name, 0, 0]]`).
Keras 3 rebuilds that as a model returning a *list*, so a transfer-learning model (a pretrained base inside a
Sequential, followed by Flatten) fails to load: "Flatten receives a list". We read the architecture from the
file, unwrap those one-element lists, rebuild with Keras's legacy config reader and load the weights by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py


def read_model_config(path: Path) -> dict[str, Any] | None:
    """The architecture stored in a legacy `.h5` file, or None for a weights-only file."""
    with h5py.File(path, "r") as handle:
        raw = handle.attrs.get("model_config")
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")  # UnicodeDecodeError (a ValueError) when it is not UTF-8
    elif isinstance(raw, str):
        # h5py decodes a UTF-8 string attribute with surrogate escapes for bytes that are not UTF-8; those names
        # would fail later, anywhere text is written.
        raw.encode("utf-8")
    return json.loads(raw)


def _layer_configs(config: Any) -> Iterator[dict]:
    """Every dict inside a model config (the model's own, each layer's, nested models' and theirs), outermost
    first: a rewrite changes what it finds in place."""
    if isinstance(config, dict):
        yield config
        for value in list(config.values()):
            yield from _layer_configs(value)
    elif isinstance(config, list):
        for value in config:
            yield from _layer_configs(value)


def unwrap_single_io(config: Any) -> Any:
    """Rewrite every nested Functional config so one-element input/output lists become a single tensor."""
    for found in _layer_configs(config):
        inner = found.get("config")
        if found.get("class_name") in ("Functional", "Model") and isinstance(inner, dict):
            for key in ("input_layers", "output_layers"):
                value = inner.get(key)
                if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
                    inner[key] = value[0]
    return config


def sequential_input_shapes(config: Any) -> Any:
    """Rewrite every Sequential's layer configs so Keras 3 reads their input shapes.

    tf.keras 2 writes a nested Sequential's layers in the new format (with a `module` key), which Keras 3
    deserialises directly, without the legacy reader that turns `batch_input_shape` into an input shape: a Conv2D
    then fails on the unknown keyword. So an InputLayer's `batch_input_shape` becomes `batch_shape`, and another
    layer's is dropped, after an InputLayer of that shape is put first when the Sequential has none."""
    for found in _layer_configs(config):
        inner = found.get("config")
        if found.get("class_name") != "Sequential" or not isinstance(inner, dict) or \
                not isinstance(inner.get("layers"), list):
            continue
        layers = inner["layers"]
        has_input = False
        for position, layer in enumerate(list(layers)):
            settings = layer.get("config") if isinstance(layer, dict) else None
            if not isinstance(settings, dict) or "batch_input_shape" not in settings:
                continue
            shape = settings.pop("batch_input_shape")
            if layer.get("class_name") == "InputLayer":
                settings.setdefault("batch_shape", shape)
                has_input = True
            elif not has_input and position == 0:
                layers.insert(0, {"class_name": "InputLayer", "config": {
                    "batch_shape": shape, "dtype": settings.get("dtype", "float32"),
                    "name": f"{settings.get('name', 'layer')}_input"}})
                has_input = True
    return config


def batch_norm_axes(config: Any) -> Any:
    """Rewrite every BatchNormalization's `axis: [3]` (as tf.keras 2 writes it) to `axis: 3`.

    Keras 3's legacy reader converts it for the layers it reads itself, but the layers of a nested base model
    (written in the new format, with a `module` key) go to the new deserialiser, whose BatchNormalization takes only
    an int: every tf.keras 2 transfer-learning model on a base with batch norm (ResNet, MobileNet, EfficientNet, ...)
    fails with "int() argument must be ... not 'list'"."""
    for found in _layer_configs(config):
        inner = found.get("config")
        if found.get("class_name") == "BatchNormalization" and isinstance(inner, dict):
            axis = inner.get("axis")
            if isinstance(axis, list) and len(axis) == 1:
                inner["axis"] = axis[0]
    return config


def load_legacy_h5(path: Path, safe_mode: bool = True) -> Any:
    """Rebuild a tf.keras 2 `.h5` model in Keras 3 and load its weights."""
    from keras.src.legacy.saving import saving_utils

    config = read_model_config(path)
    if config is None:
        raise ValueError("the file holds weights only, no architecture")
    from keras.src.saving.serialization_lib import SafeModeScope

    with SafeModeScope(safe_mode):
        model = saving_utils.model_from_config(batch_norm_axes(sequential_input_shapes(unwrap_single_io(config))))
    model.load_weights(str(path))
    return model

