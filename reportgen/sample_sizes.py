"""How many images a statistic needs before the report shows it without a caveat: the one home of those minimums.

A number from three images reads like a number from three thousand. Each statistic the report shows over a set of
images names its n; below its minimum here it also carries a caveat (or, where a figure would only mislead, is
not drawn), and the verdict lists it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Minimum:
    statistic: str  # what the reader sees, in words
    images: int  # the fewest images for which it is shown without a caveat
    why: str


# Calibration: with the 15 bins of `techniques.evaluation`, 100 labelled images leave about 7 per bin, where one
# image moves a bin's accuracy by 15 points; fewer and the ECE is mostly sampling noise.
CALIBRATION = Minimum("calibration (ECE and the reliability diagram)", 100,
                      "with 15 bins, fewer leave each bin's accuracy to a handful of images")
# Per-class precision and recall: one image of 10 moves a rate by 10 points.
CLASS_RATES = Minimum("per-class precision and recall", 10, "one image moves the rate by 10 points or more")
# A class-average map, and the filters a class uses most: an average of fewer maps is a few images, not the class.
CLASS_AVERAGE = Minimum("a class-average map or the filters a class uses most", 5,
                        "an average of fewer images shows those images, not the class")
# Accuracy over the set: one image of 20 moves it by 5 points.
ACCURACY = Minimum("accuracy", 20, "one image moves it by 5 points or more")

# Outliers: a flag is a distance far above the median of the set's distances; from a handful of images the median
# and the spread are too rough a yardstick (8 photos through a random EfficientNetB0 flagged two).
OUTLIER_FLAGS = Minimum("flagging outliers", 50, "the median and spread of fewer distances are too rough a yardstick")

ALL = (ACCURACY, CALIBRATION, CLASS_RATES, CLASS_AVERAGE, OUTLIER_FLAGS)


def enough(minimum: Minimum, n: int) -> bool:
    return n >= minimum.images


def caveat(minimum: Minimum, n: int) -> str:
    """'' when `n` is enough, else a sentence to put beside the statistic."""
    if enough(minimum, n):
        return ""
    return (f"From {n} image{'' if n == 1 else 's'} only (fewer than {minimum.images}: {minimum.why}); read it as "
            "an anecdote, not a measurement.")
