"""The detail sample: the few images that get per-image figures, chosen after the dataset pass.

Deterministic from the seed and the image names (not from the order files were listed in): the most confidently
wrong images first, then the rest stratified over classes, round robin, each class's images in an order drawn
from the seed. `--detail-images` picks them by hand instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

import numpy as np

from reportgen import seeds
from reportgen.config import flag
from reportgen.errors import InputError

DETAIL_IMAGES_FLAG = flag("detail_images")  # the option this module checks, named as the command line spells it
# Up to this share of the sample goes to the most confident mistakes: the images a reviewer most needs to see.
MISTAKE_SHARE = 0.25


def unmatched_patterns(names: Sequence[str], requested: Sequence[str]) -> list[str]:
    """The `--detail-images` patterns that match none of `names`."""
    return [p for p in requested if not any(fnmatchcase(name, p) or name == p for name in names)]


def check_requested(names: Sequence[str], requested: Sequence[str]) -> None:
    """InputError naming the `--detail-images` patterns that match no image (checked before the dataset pass)."""
    missing = unmatched_patterns(names, requested)
    if missing:
        raise InputError(f"{DETAIL_IMAGES_FLAG}: {', '.join(repr(m) for m in missing)} matches no image (names look "
                         f"like {', '.join(names[:3])}); give names as the report lists them, or globs such as 'cat/*'")


def choose_detail(names: Sequence[str], labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray,
                  count: int, seed: int, requested: Sequence[str] = ()) -> list[int]:
    """Indices (in list order) of the detail sample among the readable images (predicted >= 0)."""
    readable = [i for i in range(len(names)) if predicted[i] >= 0]
    if requested:
        chosen = [i for i in readable if any(fnmatchcase(names[i], p) or names[i] == p for p in requested)]
        check_requested([names[i] for i in readable], requested)
        return chosen
    if len(readable) <= count:
        return readable
    wrong = [i for i in readable if labels[i] >= 0 and predicted[i] != labels[i]]
    wrong.sort(key=lambda i: (-float(confidence[i]), names[i]))
    chosen = wrong[:int(MISTAKE_SHARE * count)]
    taken = set(chosen)
    by_class: dict[int, list[int]] = {}
    for i in readable:
        if i not in taken:
            owner = int(labels[i]) if labels[i] >= 0 else int(predicted[i])
            by_class.setdefault(owner, []).append(i)
    queues = [sorted(members, key=lambda i: (seeds.derive(seed, seeds.DETAIL_ORDER, names[i]), names[i]))
              for _, members in sorted(by_class.items())]
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return sorted(chosen)
