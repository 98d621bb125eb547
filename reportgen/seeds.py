"""Every random stream of a report, derived from `--seed` and a purpose: the one home of how seeds are made.

A stream is named by its purpose (one of the constants below, or any new string) and its keys (an image, a layer
name, a filter index, a step). `derive` gives the stream's seed, `rng` a NumPy generator on it and `stateless` the
(2,) seed of TensorFlow's stateless random ops. Nothing here or in its callers seeds process-wide state, except
`keras_weights`: Keras draws the initial weights of the layers it builds from its global seed, so that context
manager sets it for the weights built inside and restores every global random state on the way out.

A new purpose needs no edit here: it gets the standard derivation (a `SeedSequence` of the seed, the purpose's
hash and the keys), independent of every other stream. The purposes that predate this module keep the formula
they had, each named after its purpose in `_FORMULAS`, so the same `--seed` still gives the same report byte for
byte; changing one of them changes every report that uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

# Purposes whose formula predates this module (see `_FORMULAS`).
CAM_IMAGE = "cam/image"  # keys: the image (model input): SmoothGrad's noise, the random maps, the curves' order
DETAIL_ORDER = "detail/order"  # keys: the image's name: the order detail images are drawn in (an int, not a seed)
APPLICATION_WEIGHTS = "weights/application"  # a keras.applications model built with --weights none
FRESH_WEIGHTS = "weights/fresh"  # the freshly initialised copy (weights comparison, CAM sanity check)
PATTERN_START = "patterns/start"  # keys: layer path, filter index, k (the k-th diverse start): a starting image
PATTERN_STEP = "patterns/step"  # keys: the searched layers' paths, batch, step: that step's random transforms
RECEPTIVE_FIELD_PROBE = "receptive_field/probe"  # the random inputs that measure receptive fields

# The fresh copy's stream tag ("FRES"): a model whose random weights were drawn from the seed itself
# (`--weights none`) must not be compared with an identical copy of itself.
_FRESH_STREAM = 0x46524553

Entropy = int | tuple[int, ...]


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _key(value: Any) -> int:
    """An integer standing for one key of a stream: an array by its float32 values, a string by its text."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        return _digest(value.encode("utf-8"))
    return _digest(np.ascontiguousarray(value, np.float32).tobytes())


def _standard(seed: int, purpose: str, *keys: Any) -> Entropy:
    return int(np.random.SeedSequence([seed, _digest(purpose.encode("utf-8")), *map(_key, keys)])
               .generate_state(1, np.uint64)[0])


def _cam_image(seed: int, image: np.ndarray) -> Entropy:
    # From the image's own values, so an image gets the same noise whatever batch it falls in, whatever images
    # come before it.
    digest = _digest(np.ascontiguousarray(image, np.float32).tobytes())
    return int(np.random.SeedSequence([seed, digest]).generate_state(1, np.uint64)[0])


def _detail_order(seed: int, name: str) -> Entropy:
    return _digest(f"{seed}\0{name}".encode())


def _fresh_weights(seed: int) -> Entropy:
    return int(np.random.SeedSequence([seed, _FRESH_STREAM]).generate_state(1)[0])


def _the_seed(seed: int) -> Entropy:
    return seed


def _pattern_start(seed: int, layer: str, filter_index: int, k: int = 0) -> Entropy:
    salt = zlib.crc32(layer.encode("utf-8"))
    return (seed, salt, filter_index) if k == 0 else (seed, salt, filter_index, k)


def _pattern_step(seed: int, layers: tuple[str, ...], batch: int, step: int) -> Entropy:
    # One layer keeps the salt it always had: its patterns do not change when it is searched in a group.
    salt = zlib.crc32("\n".join(layers).encode("utf-8"))
    return ((seed * 1_000_003 + salt) % 2**63, batch * 1_000_003 + step)


_FORMULAS: dict[str, Callable[..., Entropy]] = {
    CAM_IMAGE: _cam_image,
    DETAIL_ORDER: _detail_order,
    APPLICATION_WEIGHTS: _the_seed,
    FRESH_WEIGHTS: _fresh_weights,
    PATTERN_START: _pattern_start,
    PATTERN_STEP: _pattern_step,
    RECEPTIVE_FIELD_PROBE: _the_seed,
}


def entropy(seed: int, purpose: str, *keys: Any) -> Entropy:
    """The seed material of the stream `purpose` with `keys`: an int, or a tuple of ints for the purposes whose
    formula always was one (NumPy seeds a generator from either)."""
    formula = _FORMULAS.get(purpose)
    return formula(seed, *keys) if formula is not None else _standard(seed, purpose, *keys)


def derive(seed: int, purpose: str, *keys: Any) -> int:
    """The integer seed of the stream `purpose` with `keys`, e.g. `derive(seed, CAM_IMAGE, image)`."""
    value = entropy(seed, purpose, *keys)
    if not isinstance(value, int):
        raise TypeError(f"the stream {purpose!r} is seeded by a tuple: use rng() or stateless()")
    return value


def rng(seed: int, purpose: str, *keys: Any) -> np.random.Generator:
    """A NumPy generator on the stream `purpose` with `keys`."""
    return np.random.default_rng(entropy(seed, purpose, *keys))


def stateless(seed: int, purpose: str, *keys: Any) -> tuple[int, int]:
    """The (2,) int64 seed of TensorFlow's stateless random ops for the stream `purpose` with `keys`."""
    value = entropy(seed, purpose, *keys)
    if isinstance(value, int):
        return (value % 2**63, 0)
    if len(value) != 2:
        raise TypeError(f"the stream {purpose!r} is not a stateless-op seed")
    return (int(value[0]), int(value[1]))


@contextlib.contextmanager
def keras_weights(seed: int, purpose: str) -> Iterator[None]:
    """Layers built inside draw their initial weights from the stream `purpose`; every process-wide random state
    (Python's, NumPy's, TensorFlow's global seed, Keras' global seed generator) is restored on the way out.

    Keras' initializers have no seed argument a cloned or keras.applications model could take, so this sets the
    global seeds (`keras.utils.set_random_seed`): the one place reportgen touches process-wide random state.
    TensorFlow's global seed is restored by value (its counter of unseeded random ops starts again)."""
    import keras
    import tensorflow as tf
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR
    from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED
    from tensorflow.python.eager import context

    saved = (random.getstate(), np.random.get_state(), context.global_seed(),
             global_state.get_global_attribute(GLOBAL_RANDOM_SEED),
             global_state.get_global_attribute(GLOBAL_SEED_GENERATOR))
    # Keras takes a 32-bit seed; the standard derivation gives 64 bits (the older purposes' formulas fit already).
    keras.utils.set_random_seed(derive(seed, purpose) % 2**32)
    try:
        yield
    finally:
        python_state, numpy_state, tf_seed, keras_seed, keras_generator = saved
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        tf.random.set_seed(tf_seed)
        global_state.set_global_attribute(GLOBAL_RANDOM_SEED, keras_seed)
        global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, keras_generator)
