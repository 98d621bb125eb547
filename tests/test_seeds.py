"""`seeds`: the formulas that predate the module give exactly the numbers they always gave (reports stay byte for
byte), new purposes get independent streams, and `keras_weights` leaves no process-wide random state behind."""

from __future__ import annotations

import hashlib
import random
import zlib

import numpy as np

from reportgen import seeds


def test_the_old_formulas_are_kept_by_purpose():
    image = np.random.default_rng(1).random((8, 8, 3))
    digest = int.from_bytes(hashlib.blake2b(image.astype(np.float32).tobytes(), digest_size=8).digest(), "little")
    for seed in (0, 7, 123456):
        assert seeds.derive(seed, seeds.CAM_IMAGE, image) == int(
            np.random.SeedSequence([seed, digest]).generate_state(1, np.uint64)[0])
        assert seeds.derive(seed, seeds.DETAIL_ORDER, "cat.png") == int.from_bytes(
            hashlib.blake2b(f"{seed}\0cat.png".encode(), digest_size=8).digest(), "little")
        assert seeds.derive(seed, seeds.FRESH_WEIGHTS) == int(
            np.random.SeedSequence([seed, 0x46524553]).generate_state(1)[0])
        assert seeds.derive(seed, seeds.APPLICATION_WEIGHTS) == seed
        salt = zlib.crc32(b"block/conv")
        for f, k in ((0, 0), (3, 0), (3, 2)):
            expected = np.random.default_rng([seed, salt, f] if k == 0 else [seed, salt, f, k]).random(4)
            np.testing.assert_array_equal(seeds.rng(seed, seeds.PATTERN_START, "block/conv", f, k).random(4), expected)
        salt = zlib.crc32(b"a\nb")
        assert seeds.stateless(seed, seeds.PATTERN_STEP, ("a", "b"), 2, 9) == (
            (seed * 1_000_003 + salt) % 2**63, 2 * 1_000_003 + 9)


def test_new_purposes_are_independent_streams():
    drawn = {seeds.derive(0, purpose, key) for purpose in ("a/x", "a/y") for key in (0, 1, "name")}
    assert len(drawn) == 6
    assert seeds.derive(3, "a/x", 1) == seeds.derive(3, "a/x", 1)
    assert seeds.derive(3, "a/x", 1) != seeds.derive(4, "a/x", 1)


def test_keras_weights_is_reproducible_and_restores_the_global_state(keras):
    def build():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])

    random.seed(11)
    np.random.seed(11)
    expected = (random.random(), np.random.random())
    random.seed(11)
    np.random.seed(11)
    with seeds.keras_weights(5, seeds.FRESH_WEIGHTS):
        first = build().get_weights()[0]
    assert (random.random(), np.random.random()) == expected
    with seeds.keras_weights(5, seeds.FRESH_WEIGHTS):
        again = build().get_weights()[0]
    with seeds.keras_weights(6, seeds.FRESH_WEIGHTS):
        other = build().get_weights()[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
