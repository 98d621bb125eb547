"""The `summary` section: model facts and the layer table, with an anchor per layer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from reportgen.analysis import Analysis
from reportgen.registry import SECTIONS
from reportgen.report import Facts, Section, SectionResult, Table
from reportgen.sections.anchors import cam_section_id, section_id
from reportgen.techniques.cams import METHODS
from reportgen.techniques.summary import summarize_model


def format_shape(shape: object) -> str:
    if shape is None:
        return "?"
    if isinstance(shape, tuple) and shape and isinstance(shape[0], tuple):
        return ", ".join(format_shape(s) for s in shape)
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"  # type: ignore[union-attr]


def _layer_links(analysis: Analysis, path: str) -> tuple[tuple[str, str], ...]:
    """A link to every section that could show the layer; the renderer keeps those that exist, so a layer chosen
    with --layers, or the CAM methods' target layer, links to its sections too."""
    links = [(kind.link, "#" + section_id(kind.name, analysis, path)) for kind in SECTIONS if kind.link]
    links += [(METHODS[method].label, "#" + cam_section_id(analysis, path, method))
              for method in analysis.options.cam_methods if METHODS[method].resolution == "layer"]
    return tuple(links)


def image_handling(analysis: Analysis, shown: int = 4) -> str:
    """How the images were brought to the model's input: from which sizes, with which colour conversions."""
    images = analysis.images
    height, width = images.pixels.shape[1:3]
    sizes = Counter(images.original_sizes)
    same = sizes.get((width, height), 0)
    resized = [f"{w}x{h} ({n})" for (w, h), n in sizes.most_common() if (w, h) != (width, height)]
    parts = [f"{len(images.sources)} images to {width}x{height}"]
    if resized:
        listed = ", ".join(resized[:shown]) + (f" and {len(resized) - shown} more sizes" if len(resized) > shown
                                                else "")
        parts.append(f"resized from {listed} (area averaging to shrink, bilinear to enlarge, aspect not kept)")
    if same:
        parts.append(f"{same} already that size")
    conversions = Counter(c for c in images.conversions if c)
    parts += [f"{what} ({n})" for what, n in conversions.most_common()]
    return "; ".join(parts)


def build(analysis: Analysis, earlier: Mapping[str, SectionResult]) -> SectionResult:
    loaded = analysis.loaded
    options = analysis.options
    explained = options.sections is None or "cam" in options.sections
    target = analysis.cam_target if explained else None
    summary = summarize_model(analysis.model, analysis.layers, analysis.layer_shapes, target.path if target else None)
    facts = [
        ("Model", summary.name),
        ("Source", loaded.source),
        ("Format", loaded.file_format),
        ("SHA-256", loaded.sha256 or "n/a (not loaded from a file)"),
        ("Input shape", format_shape(summary.input_shape)),
        ("Output shape", format_shape(summary.output_shape)),
        ("Parameters", f"{summary.total_params:,} ({summary.trainable_params:,} trainable, "
                       f"{summary.non_trainable_params:,} non-trainable)"),
        ("Layers", f"{len(summary.layers)} ({sum(1 for r in summary.layers if r.depth > 0)} nested)"),
        ("Preprocessing", f"{analysis.preprocessor.mode}: {analysis.preprocessor.formula()}"),
        ("Why this preprocessing", analysis.preprocessor.reason or "n/a"),
        ("Images", image_handling(analysis)),
        ("Classes", f"{len(analysis.class_names.names)} (names from {analysis.class_names.source})"),
    ]
    if loaded.family:
        facts.append(("keras.applications family", loaded.family))
    rows, ids, links = [], [], []
    for row in summary.layers:
        rows.append(("\u2003" * row.depth + row.path, row.type_name, format_shape(row.output_shape),
                     f"{row.params:,}", f"{row.trainable_params:,}"))
        ids.append(analysis.layer_anchor(row.path))
        links.append(_layer_links(analysis, row.path))
    table = Table(
        columns=("Layer", "Type", "Output shape", "Parameters", "Trainable"),
        rows=tuple(rows),
        caption="Every layer in execution order; nested layers are indented and named by their path.",
        row_ids=tuple(ids),
        row_links=tuple(links),
    )
    data = {
        "name": summary.name,
        "total_params": summary.total_params,
        "trainable_params": summary.trainable_params,
        "non_trainable_params": summary.non_trainable_params,
        "layers": [
            {"path": r.path, "type": r.type_name, "output_shape": format_shape(r.output_shape), "params": r.params,
             "trainable_params": r.trainable_params, "parent": r.parent, "sections": list(r.sections)}
            for r in summary.layers
        ],
    }
    return SectionResult((Section(id="summary", kind="summary", title="Model summary",
                                  blocks=(Facts(tuple(facts)), table), data=data),))
