"""The `class` sections: one per class that occurs (a top prediction, a label, or asked for with --classes), with
its images and their maps, the average map per method, and accuracy when the images are labelled."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from reportgen import figures
from reportgen.analysis import Analysis
from reportgen.report import Facts, Figure, Section, SectionResult, Table, Text
from reportgen.sections.cams import (
    COLORMAP,
    CamBundle,
    cam_bundle,
    image_tile,
    method_section_id,
    overlay_tile,
    short,
    unit,
)
from reportgen.sections.predictions import MAX_LISTED_CLASSES
from reportgen.techniques.cams import METHODS, Heatmap

MAX_CLASS_IMAGES = 24  # images drawn per class and method; the table lists all


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}% ({part} of {whole})" if whole else "n/a"


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
        recall = _percent(int(correct[index]), int(per_label[index])) if labelled.any() else "n/a"
        precision = _percent(int(correct[index]), int(predicted_labelled[index])) if labelled.any() else "n/a"
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
        facts.append(("Accuracy on its labelled images (recall)", _percent(correct, len(labelled_as))))
        facts.append(("Precision (labelled images predicted as it)", _percent(correct, predicted_labelled)))
    if images:
        facts.append(("Mean probability on these images", f"{float(probability.mean()):.3f}"))

    rows, links = [], []
    for i in images:
        label = int(predictions.labels[i])
        top = int(predictions.predicted[i])
        why = next(t.reasons for t in plan.targets[i] if t.class_index == index)
        rows.append((analysis.images.sources[i].name, names[label] if label >= 0 else "", names[top],
                     f"{predictions.probabilities.values[i, index]:.3f}", ", ".join(why)))
        links.append((("prediction", f"#prediction-{analysis.image_ids[i]}"),))
    blocks: list = [Facts(tuple(facts)), Table(
        columns=("Image", "Label", "Top prediction", f"p({name})", "Why"), rows=tuple(rows),
        caption=f"Images whose maps are shown for {name}: it is their top prediction, their label, or was asked for.",
        row_links=tuple(links))]

    arrays: dict[str, np.ndarray] = {}
    averages: dict[str, Any] = {}
    dataset_data = _dataset_blocks(analysis, index, sid, blocks, arrays)
    results = bundle.results
    if results is None:
        blocks.append(Text("No class activation maps were computed for this report."))
    else:
        for method in results.methods:
            maps = [h for h in results.for_method(method) if h.target.class_index == index]
            if not maps:
                continue
            figure, average = _method_figure(analysis, bundle, method, sid, name, maps)
            blocks.append(figure)
            key = f"{sid}.{method}.average"
            arrays[key] = average
            averages[method] = {"array_key": key if analysis.options.save_arrays else None, "maps": len(maps),
                                "mean_deletion_auc": float(np.mean([h.deletion_auc for h in maps])),
                                "mean_insertion_auc": float(np.mean([h.insertion_auc for h in maps]))}
    data = {"class_index": index, "class_name": name, "images": [analysis.image_ids[i] for i in images],
            "labelled": len(labelled_as), "predicted": len(predicted_as),
            "accuracy": correct / len(labelled_as) if len(labelled_as) else None,
            "precision": correct / predicted_labelled if predicted_labelled else None,
            "mean_probability": float(probability.mean()) if images else None, "average_maps": averages,
            "dataset": dataset_data}
    return Section(id=sid, kind="class", title=f"Class: {name}", blocks=tuple(blocks), class_name=name, data=data,
                   arrays=arrays)


FILTERS_LISTED = 8


def _dataset_blocks(analysis: Analysis, index: int, sid: str, blocks: list, arrays: dict[str, np.ndarray]
                    ) -> dict[str, Any] | None:
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
             ("Accuracy over the set", "n/a" if accuracy is None else _percent(summary.correct, summary.labelled))]
    data: dict[str, Any] = {"images": summary.images, "labelled": summary.labelled, "accuracy": accuracy}
    target = analysis.cam_target
    if summary.filter_means is not None and target is not None:
        others = np.mean([c.filter_means for c in dataset.classes if c.filter_means is not None], axis=0)
        ratio = summary.filter_means / np.where(others > 0, others, np.inf)
        order = np.argsort(-ratio, kind="stable")[:FILTERS_LISTED]
        facts.append((f"Filters of {target.path} it uses most", ", ".join(
            f"{int(k)} ({ratio[k]:.1f}x)" for k in order if np.isfinite(ratio[k]) and ratio[k] > 0) or "none"))
        data["filter_means"] = summary.filter_means.tolist()
        data["filters_used_most"] = [int(k) for k in order]
    blocks.append(Text(f"Over all {dataset.images} images of the set:"))
    blocks.append(Facts(tuple(facts)))
    tiles, labels = [], []
    size = figures.fit_box(np.zeros((*analysis.size, 3), np.uint8), 128).shape[:2]  # every tile the images' shape
    if summary.mean_map is not None and unit(summary.mean_map) is not None:
        tiles.append(figures.heatmap_tile(unit(summary.mean_map), size, COLORMAP))
        labels.append(f"mean Grad-CAM of {summary.images}")
        key = f"{sid}.dataset.average"
        arrays[key] = summary.mean_map
        data["average_map"] = {"array_key": key if analysis.options.save_arrays else None,
                               "layer": target.path if target else None}
    most_shown = {r.index for r in summary.most_confident}
    least = [r for r in summary.least_confident if r.index not in most_shown]  # a small class: no image twice
    ranked = [*summary.most_confident, *least]
    for entry, pixels in zip(ranked, analysis.read_images([r.index for r in ranked]), strict=True):
        tiles.append(figures.fit_box(pixels, 128))
        labels.append(f"{short(entry.name.rsplit('/', 1)[-1], 12)} {entry.score:.0%}")
    if tiles:
        most, fewest = len(summary.most_confident), len(least)
        where = target.path if target else "the CAM layer"
        caption = (f"First: the Grad-CAM map of {name} at {where} averaged over all {summary.images} of its images "
                   f"(each scaled to its maximum); then the {most} images the model gives the highest p({name}), "
                   f"then the {fewest} other images it gives the lowest.")
        blocks.append(Figure(key=f"{sid}-dataset", title=f"{name}: over the whole set", caption=caption,
                             pixels=analysis.encode(figures.fit_width(figures.tile_grid(
                                 tiles, columns=min(len(tiles), 9), labels=labels)))))
    data["most_confident"] = [{"image": r.name, "probability": r.score} for r in summary.most_confident]
    data["least_confident"] = [{"image": r.name, "probability": r.score} for r in summary.least_confident]
    return data


def _method_figure(analysis: Analysis, bundle: CamBundle, method: str, sid: str, name: str,
                   maps: list[Heatmap]) -> tuple[Figure, np.ndarray]:
    """The average map (each map scaled to its maximum first, so every image counts the same) and each image's."""
    scaled = [unit(h.raw) for h in maps]
    stack = [m if m is not None else np.zeros_like(maps[0].raw) for m in scaled]
    average = np.mean(stack, axis=0).astype(np.float32)
    tile = image_tile(analysis, maps[0].image)
    size = tile.shape[:2]
    shown = maps[:MAX_CLASS_IMAGES]
    average_tile = (figures.hatched(*size) if unit(average) is None
                    else figures.heatmap_tile(unit(average), size, COLORMAP))
    tiles = [average_tile] + [overlay_tile(image_tile(analysis, h.image), h.raw) for h in shown]
    labels = [f"average of {len(maps)}"] + [
        f"{short(analysis.images.sources[h.image].name.rsplit('/', 1)[-1], 14)} {h.probability:.0%}" for h in shown]
    label = METHODS[method].label
    more = f" (the first {len(shown)} of {len(maps)} shown)" if len(maps) > len(shown) else ""
    caption = (f"{label} maps for {name}{more}. First tile: the average of the maps, each scaled to its own maximum; "
               f"then each image with its map and the probability of {name}. Details and trust scores in "
               f"the {label} section.")
    figure = Figure(key=f"{sid}-{method_section_id(analysis, bundle, method).removeprefix('cam-')}",
                    title=f"{name}: {label}", caption=caption,
                    pixels=analysis.encode(figures.fit_width(figures.tile_grid(tiles, columns=min(len(tiles), 8),
                                                                               labels=labels))))
    return figure, average
