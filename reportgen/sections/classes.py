"""The `class` sections: one per class that occurs (a top prediction, a label, or asked for with --classes), with
its images and their maps, the average map per method, and accuracy when the images are labelled."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from reportgen import figures, sample_sizes
from reportgen.analysis import Analysis
from reportgen.report import Facts, Figure, Section, SectionResult, Table, Text
from reportgen.sections.anchors import image_maps_id
from reportgen.sections.cams import (
    COLORMAP,
    CamBundle,
    cam_bundle,
    image_tile,
    trusted_methods,
    unit,
)
from reportgen.sections.predictions import MAX_LISTED_CLASSES
from reportgen.techniques.cams import METHODS, Heatmap


def _percent(part: int, whole: int, minimum: sample_sizes.Minimum | None = None) -> str:
    """A share with its n; below `minimum`'s images, with the caveat."""
    if not whole:
        return "n/a"
    few = " (too few images to read as a rate)" if minimum and not sample_sizes.enough(minimum, whole) else ""
    return f"{100 * part / whole:.1f}% ({part} of {whole}){few}"


def build(analysis: Analysis, earlier: Mapping[str, SectionResult]) -> SectionResult:
    bundle = cam_bundle(analysis)
    plan = bundle.plan
    sections = [_overview(analysis, bundle)]
    for n, index in enumerate(plan.occurring, start=1):
        analysis.progress("class", f"{analysis.class_names.names[index]} ({n}/{len(plan.occurring)})")
        sections.append(_class_section(analysis, bundle, index, plan.class_ids[index]))
    return SectionResult(tuple(sections), bundle.warnings)  # the maps' warnings: once, with the cam section's


def _overview(analysis: Analysis, bundle: CamBundle) -> Section:
    """One row per class (every class of a small model, else those that occur); a class without a section gets its
    anchor on its row, so every class can be linked to."""
    plan = bundle.plan
    predictions = plan.predictions
    names = analysis.class_names.names
    count = len(names)
    labelled = predictions.labels >= 0
    per_label = np.bincount(predictions.labels[labelled], minlength=count)
    per_prediction = np.bincount(predictions.predicted, minlength=count)
    correct = np.bincount(predictions.labels[labelled & (predictions.labels == predictions.predicted)],
                          minlength=count)
    predicted_labelled = np.bincount(predictions.predicted[labelled], minlength=count)
    listed = range(count) if count <= MAX_LISTED_CLASSES else plan.occurring
    occurring = set(plan.occurring)
    rows, ids, links, data = [], [], [], []
    for index in listed:
        recall = _percent(int(correct[index]), int(per_label[index]), sample_sizes.CLASS_RATES) \
            if labelled.any() else "n/a"
        precision = _percent(int(correct[index]), int(predicted_labelled[index]), sample_sizes.CLASS_RATES) \
            if labelled.any() else "n/a"
        rows.append((names[index], str(index), str(int(per_label[index])), str(int(per_prediction[index])), recall,
                     precision))
        ids.append(f"{plan.class_ids[index]}-row" if index in occurring else plan.class_ids[index])
        links.append((("section", f"#{plan.class_ids[index]}"),) if index in occurring else ())
        data.append({"class_index": index, "class_name": names[index], "anchor": plan.class_ids[index],
                     "labelled": int(per_label[index]), "predicted": int(per_prediction[index]),
                     "section": index in occurring})
    scope = "every class" if count <= MAX_LISTED_CLASSES else f"the {len(plan.occurring)} of {count} classes that occur"
    table = Table(
        columns=("Class", "Index", "Labelled", "Predicted (top 1)", "Recall", "Precision"),
        rows=tuple(rows), row_ids=tuple(ids), row_links=tuple(links),
        caption=(f"{scope[0].upper()}{scope[1:]}. A class gets a section when it is an image's top prediction, its "
                 "label, or asked for with --classes. Recall and precision count labelled images only."),
    )
    return Section(id="classes", kind="class", title="Classes", blocks=(table,),
                   data={"classes": data, "listed": "all" if count <= MAX_LISTED_CLASSES else "occurring"})


def _class_section(analysis: Analysis, bundle: CamBundle, index: int, sid: str) -> Section:
    plan = bundle.plan
    predictions = plan.predictions
    names = analysis.class_names.names
    name = names[index]
    images = [i for i, row in enumerate(plan.targets) if any(t.class_index == index for t in row)]
    labelled_as = np.flatnonzero(predictions.labels == index)
    labelled = predictions.labels >= 0
    predicted_as = np.flatnonzero(predictions.predicted == index)
    correct = int(np.count_nonzero(predictions.predicted[labelled_as] == index))
    predicted_labelled = int(np.count_nonzero(labelled[predicted_as]))
    probability = predictions.probabilities.values[images, index] if images else np.zeros(0)

    facts = [("Class index", str(index)), ("Images explained for this class", str(len(images))),
             ("Labelled as this class", str(len(labelled_as))), ("Predicted as this class (top 1)",
                                                                  str(len(predicted_as)))]
    if labelled.any():
        facts.append(("Accuracy on its labelled images (recall)",
                      _percent(correct, len(labelled_as), sample_sizes.CLASS_RATES)))
        facts.append(("Precision (labelled images predicted as it)",
                      _percent(correct, predicted_labelled, sample_sizes.CLASS_RATES)))
    if images:
        facts.append(("Mean probability on these images", f"{float(probability.mean()):.3f}"))

    rows, links = [], []
    for i in images:
        label = int(predictions.labels[i])
        top = int(predictions.predicted[i])
        why = next(t.reasons for t in plan.targets[i] if t.class_index == index)
        rows.append((analysis.images.sources[i].name, names[label] if label >= 0 else "", names[top],
                     f"{predictions.probabilities.values[i, index]:.3f}", ", ".join(why)))
        links.append((("prediction", f"#prediction-{analysis.image_ids[i]}"),
                      ("maps", f"#{image_maps_id(analysis, i)}")))
    blocks: list = [Facts(tuple(facts)), Table(
        columns=("Image", "Label", "Top prediction", f"p({name})", "Why"), rows=tuple(rows),
        caption=f"Images whose maps are shown for {name}: it is their top prediction, their label, or was asked for.",
        row_links=tuple(links))]

    arrays: dict[str, np.ndarray] = {}
    averages: dict[str, Any] = {}
    dataset_data = _dataset_blocks(analysis, bundle, index, sid, blocks, arrays)
    results = bundle.results
    if results is None:
        blocks.append(Text("No class activation maps were computed for this report."))
    else:
        trusted = trusted_methods(analysis, bundle)
        untrusted = [METHODS[m].label for m in results.methods if m not in trusted]
        averaged = []
        # Every method's average goes to report.json and arrays.npz; the page draws only the trusted ones.
        for method in results.methods:
            maps = [h for h in results.for_method(method) if h.target.class_index == index]
            if not maps:
                continue
            average = _average(maps)
            if method in trusted:
                averaged.append((method, average, len(maps)))
            key = f"{sid}.{method}.average"
            arrays[key] = average
            averages[method] = {"array_key": key if analysis.options.save_arrays else None, "maps": len(maps),
                                "mean_deletion_auc": float(np.mean([h.deletion_auc for h in maps])),
                                "mean_insertion_auc": float(np.mean([h.insertion_auc for h in maps])),
                                "drawn": method in trusted}
        if averaged:
            blocks.append(_averages_figure(analysis, bundle, sid, name, averaged))
        if untrusted:
            blocks.append(Text(f"No average of {', '.join(untrusted)} drawn: the report does not trust "
                               f"{'its' if len(untrusted) == 1 else 'their'} maps here (no better than a random map, "
                               "the sanity check did not pass, or the weights look untrained; see the verdict)."))
    data = {"class_index": index, "class_name": name, "images": [analysis.image_ids[i] for i in images],
            "labelled": len(labelled_as), "predicted": len(predicted_as),
            "accuracy": correct / len(labelled_as) if len(labelled_as) else None,
            "precision": correct / predicted_labelled if predicted_labelled else None,
            "mean_probability": float(probability.mean()) if images else None, "average_maps": averages,
            "dataset": dataset_data}
    return Section(id=sid, kind="class", title=f"Class: {name}", blocks=tuple(blocks), class_name=name, data=data,
                   arrays=arrays)


FILTERS_LISTED = 8


def _dataset_blocks(analysis: Analysis, bundle: CamBundle, index: int, sid: str, blocks: list,
                    arrays: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """What every image of the set says about the class: accuracy, its Grad-CAM map averaged over all its images,
    the images the model is most and least sure of, and the CAM-layer filters it uses most."""
    dataset = analysis.dataset
    if dataset is None:
        return None
    summary = dataset.classes[index]
    name = analysis.class_names.names[index]
    accuracy = summary.accuracy
    facts = [("Images of the whole set", f"{summary.images} (labelled {summary.labelled}, or predicted as {name} "
                                         "when unlabelled)"),
             ("Accuracy over the set", "n/a" if accuracy is None else _percent(summary.correct, summary.labelled,
                                                                                 sample_sizes.CLASS_RATES))]
    data: dict[str, Any] = {"images": summary.images, "labelled": summary.labelled, "accuracy": accuracy}
    target = analysis.cam_target
    enough = sample_sizes.enough(sample_sizes.CLASS_AVERAGE, summary.images)
    if summary.filter_means is not None and target is not None and not enough:
        facts.append((f"Filters of {target.path} it uses most",
                      f"not ranked: {sample_sizes.caveat(sample_sizes.CLASS_AVERAGE, summary.images)}"))
    if summary.filter_means is not None and target is not None and enough:
        others = np.mean([c.filter_means for c in dataset.classes if c.filter_means is not None], axis=0)
        ratio = summary.filter_means / np.where(others > 0, others, np.inf)
        order = np.argsort(-ratio, kind="stable")[:FILTERS_LISTED]
        facts.append((f"Filters of {target.path} it uses most", ", ".join(
            f"{int(k)} ({ratio[k]:.1f}x)" for k in order if np.isfinite(ratio[k]) and ratio[k] > 0) or "none"))
        data["filter_means"] = summary.filter_means.tolist()
        data["filters_used_most"] = [int(k) for k in order]
    tiles, labels = [], []
    size = figures.fit_box(np.zeros((*analysis.size, 3), np.uint8), 128).shape[:2]  # every tile the images' shape
    drawn = False
    if summary.mean_map is not None:  # report.json and arrays.npz keep the average; the page draws it if trusted
        key = f"{sid}.dataset.average"
        arrays[key] = summary.mean_map
        data["average_map"] = {"array_key": key if analysis.options.save_arrays else None,
                               "layer": target.path if target else None}
        if "gradcam" not in trusted_methods(analysis, bundle):
            facts.append(("Mean Grad-CAM over the set", "not drawn: the report does not trust Grad-CAM's maps here "
                                                        "(see the verdict)"))
        elif unit(summary.mean_map) is not None:
            tiles.append(figures.heatmap_tile(unit(summary.mean_map), size, COLORMAP))
            labels.append(f"mean Grad-CAM of {summary.images}")
            drawn = True
    blocks.append(Text(f"Over all {dataset.images} images of the set:"))
    blocks.append(Facts(tuple(facts)))
    most_shown = {r.index for r in summary.most_confident}
    # The least sure list only when it is more than the most sure list read backwards: a class of 6 images with
    # 6 examples each way would show the same images twice.
    least = ([r for r in summary.least_confident if r.index not in most_shown]
             if summary.images >= 2 * len(summary.most_confident) else [])
    ranked = [*summary.most_confident, *least]
    for entry, pixels in zip(ranked, analysis.read_images([r.index for r in ranked]), strict=True):
        tiles.append(figures.fit_box(pixels, 128))
        labels.append(f"{entry.name.rsplit('/', 1)[-1]} {entry.score:.0%}")
    if tiles:
        most, fewest = len(summary.most_confident), len(least)
        where = target.path if target else "the CAM layer"
        first = (f"First: the Grad-CAM map of {name} at {where} averaged over all {summary.images} of its images "
                 "(each scaled to its maximum); then " if drawn else "")
        caption = (f"{first}the {most} images the model gives the highest p({name})"
                   + (f", then the {fewest} other images it gives the lowest." if fewest else "."))
        caption = caption[0].upper() + caption[1:]
        blocks.append(Figure(key=f"{sid}-dataset", title=f"{name}: over the whole set", caption=caption,
                             pixels=analysis.encode(figures.fit_width(figures.tile_grid(
                                 tiles, columns=min(len(tiles), 9), labels=labels)))))
    data["most_confident"] = [{"image": r.name, "probability": r.score} for r in summary.most_confident]
    data["least_confident"] = [{"image": r.name, "probability": r.score} for r in summary.least_confident]
    return data


def _average(maps: list[Heatmap]) -> np.ndarray:
    """The mean of the maps, each scaled to its own maximum first, so every image counts the same."""
    scaled = [unit(h.raw) for h in maps]
    return np.mean([m if m is not None else np.zeros_like(maps[0].raw) for m in scaled], axis=0).astype(np.float32)


def _averages_figure(analysis: Analysis, bundle: CamBundle, sid: str, name: str,
                     averaged: list[tuple[str, np.ndarray, int]]) -> Figure:
    """Each trusted method's average map for the class, side by side; each image's own maps are in the cam
    section's Maps per image (linked from the table above), not repeated here."""
    size = image_tile(analysis, 0).shape[:2]
    tiles = [figures.hatched(*size) if unit(a) is None else figures.heatmap_tile(unit(a), size, COLORMAP)
             for _, a, _ in averaged]
    labels = [f"{METHODS[m].label}\nmean of {n}" for m, _, n in averaged]
    counts = {n for _, _, n in averaged}
    few = [sample_sizes.caveat(sample_sizes.CLASS_AVERAGE, n) for n in sorted(counts)]
    caption = (f"The average map of {name} per method the report trusts here, over the detail images explained for "
               f"it (each map scaled to its own maximum first). Each image's maps: Maps per image. "
               + " ".join(c for c in few if c))
    return Figure(key=f"{sid}-averages", title=f"{name}: average maps", caption=caption.strip(),
                  pixels=analysis.encode(figures.fit_width(figures.tile_grid(tiles, columns=len(tiles),
                                                                             labels=labels))))
