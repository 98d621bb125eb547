"""What commands read from a report (check, diff, publish, summary.md): predictions, accuracy, dead units,
the CAM checks, weight tensors, the layers, and whether two reports can be compared at all."""

from __future__ import annotations

from dataclasses import dataclass

from reportgen.report_folder.schema import (
    Faithfulness,
    Report,
)


def ambiguous_names(report: Report) -> list[str]:
    """Image names that more than one image of the report has, so they cannot pair images between two reports
    (reports of an earlier reportgen given two IMAGES folders holding the same file names; generate now names
    such images after their folder). `compare` leaves them out."""
    seen: dict[str, int] = {}
    for image in report.images:
        seen[image.name] = seen.get(image.name, 0) + 1
    return [name for name, count in seen.items() if count > 1]


def ambiguity_warning(report: Report, role: str) -> str | None:
    """The warning for a report whose image names do not identify its images, or None."""
    names = ambiguous_names(report)
    if not names:
        return None
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (f"{role} names {len(names)} image name(s) for more than one image ({shown}): images are matched by "
            "name, so these are not compared; regenerate it with this reportgen, which names images after their "
            "folder when two IMAGES folders hold the same names")


@dataclass(frozen=True)
class ImagePrediction:
    """The top prediction for one image, as a report recorded it."""

    image: str  # image id
    label: str | None
    predicted: str | None  # class name
    predicted_index: int | None
    probability: float | None  # of the predicted class
    correct: bool | None  # None when the image has no label that is a class name


def predictions(report: Report) -> dict[str, ImagePrediction]:
    """Image id -> top prediction of every image of the set (`images[].prediction`, from the dataset pass), else
    of the images in the "predictions" list; {} when the report has neither."""
    out: dict[str, ImagePrediction] = {}
    names = list(report.class_names)
    for image in report.images:
        top = image.prediction
        if top is None:
            continue
        correct = None if image.label not in names else names.index(image.label) == top.class_index
        out[image.id] = ImagePrediction(image.id, image.label, top.class_name, top.class_index, top.probability,
                                        correct)
    if out:
        return out
    for entry in report.predictions:
        top = entry.top_k[0]
        out[entry.image] = ImagePrediction(entry.image, entry.label, top.class_name, top.class_index,
                                           top.probability, entry.correct)
    return out


@dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy: the share of labelled images whose top prediction is the label."""

    value: float
    correct: int
    labelled: int

    def text(self) -> str:
        """The accuracy as a reader sees it, e.g. "75.0% (9 of 12)"."""
        return f"{self.value:.1%} ({self.correct} of {self.labelled})"


def accuracy(report: Report) -> Accuracy | None:
    """Top-1 accuracy on the report's labelled images, or None when the report holds no predictions or labels."""
    verdicts = [p.correct for p in predictions(report).values() if p.correct is not None]
    if not verdicts:
        return None
    correct = sum(verdicts)
    return Accuracy(correct / len(verdicts), correct, len(verdicts))


@dataclass(frozen=True)
class LayerCount:
    """How many of a layer's `total` filters or channels are dead."""

    layer: str
    count: int
    total: int


def dead_filters(report: Report) -> list[LayerCount]:
    """Per layer, filters no input switched on (filter-pattern search), in report order.

    There is one entry per (filter, direction); a filter counts as dead when an entry of it says so."""
    seen: dict[str, dict[int, bool]] = {}
    for entry in report.filter_patterns:
        filters = seen.setdefault(entry.layer, {})
        filters[entry.filter] = filters.get(entry.filter, False) or entry.dead
    return [LayerCount(layer, sum(f.values()), len(f)) for layer, f in seen.items()]


def dead_channels(report: Report) -> list[LayerCount]:
    """Per layer, feature-map channels that are zero on every image."""
    return [LayerCount(e.layer, e.dead_channels, e.channels) for e in report.feature_maps]


@dataclass(frozen=True)
class SanityResult:
    """The model-randomisation check of one CAM method: do its maps change when the weights are random?"""

    method: str
    passed: bool
    correlation: float | None
    status: str  # "passes", "flagged", "empty maps" or "undetermined"


def cam_sanity(report: Report) -> list[SanityResult]:
    """Model-randomisation results of the CAM methods, from each method section's `data["sanity"]`.

    The cam overview section has no "sanity", and a method's is null when its check did not run."""
    results = []
    for section in report.sections_of("cam"):
        assert section.cam is not None
        sanity = section.cam.sanity
        if sanity is not None:
            assert section.cam.method is not None  # the schema requires it beside a sanity check
            status = sanity.status or ("flagged" if sanity.flagged else "passes")
            results.append(SanityResult(section.cam.method, not sanity.flagged, sanity.correlation, status))
    return results


def cam_faithfulness(report: Report) -> tuple[Faithfulness, ...]:
    """Per CAM method, deletion / insertion against random maps, from the cam overview's `data["methods"]` (rows
    with `margin_over_random`, `beats_random` and `same_maps_as`; reports older than those keys give none)."""
    for section in report.sections_of("cam"):
        if section.cam is not None and section.cam.methods is not None:
            return section.cam.faithfulness
    return ()


@dataclass(frozen=True)
class TensorEntry:
    """One weight tensor of a layer, and its key in arrays.npz (None without --save-arrays)."""

    layer: str
    tensor: str
    layer_type: str
    shape: tuple[int, ...]
    array_key: str | None


def weight_tensors(report: Report) -> dict[tuple[str, str], TensorEntry]:
    """(layer, tensor) -> where the trained weights are in arrays.npz, from the per-layer weights sections."""
    out: dict[tuple[str, str], TensorEntry] = {}
    for section in report.sections_of("weights"):
        if section.weights is None or section.layer is None:  # the overview
            continue
        for tensor in section.weights.tensors:
            out[(section.layer, tensor.tensor)] = TensorEntry(section.layer, tensor.tensor, section.weights.type,
                                                              tensor.shape, tensor.trained_key)
    return out


def summary_layers(report: Report) -> list[str]:
    """The layer paths of the report's summary section, in model order; [] without one."""
    for section in report.sections_of("summary"):
        if isinstance(section.data.get("layers"), list):
            return section.layer_paths
    return []


def unrelated_models(old: Report, new: Report, roles: tuple[str, str] = ("OLD", "NEW"),
                     compared: str = "the comparisons below") -> str | None:
    """The warning when two reports look like two different models rather than two versions of one (other
    classes, or no layer in common), as `diff` and `check --baseline` give it; None when they look related."""
    reasons = []
    old_classes, new_classes = list(old.class_names), list(new.class_names)
    if old_classes != new_classes:
        reasons.append(f"they predict different classes ({len(old_classes)} and {len(new_classes)}; "
                       f"{len(set(old_classes) & set(new_classes))} names in common)")
    old_layers = set(summary_layers(old)) or {k[0] for k in weight_tensors(old)}
    new_layers = set(summary_layers(new)) or {k[0] for k in weight_tensors(new)}
    if old_layers and new_layers and not old_layers & new_layers:
        reasons.append("they have no layer in common (different architectures)")
    if not reasons:
        return None
    return (f"{roles[0]} and {roles[1]} look like unrelated models, not two versions of one: " + " and ".join(reasons)
            + f"; {compared} may mean little")
