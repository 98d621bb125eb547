"""The only writer of report.json: the layout `schema` reads, built from plain values render hands over.

Key order is part of the output (the same report gives the same bytes), and "schema_version" and "generator" come
first so `read.looks_like_report` recognises a report from its first bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.report_folder.schema import GENERATOR, MANIFEST, SCHEMA_VERSION


def json_safe(value: Any) -> Any:
    """NaN and Inf become null (JSON has neither); numpy scalars and tuples become plain JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def figure_entry(key: str, file: str, title: str, caption: str, width: int, height: int,
                 embedded: bool) -> dict[str, Any]:
    """One figure of a section; `file` is its path in the report folder (figures/NAME.png)."""
    return {"key": key, "file": file, "title": title, "caption": caption, "width": width, "height": height,
            "embedded": embedded}


def section_entry(id: str, kind: str, title: str, layer: str | None, class_name: str | None,
                  figures: Sequence[Mapping[str, Any]], data: Mapping[str, Any] | None,
                  arrays: Iterable[str] | None) -> dict[str, Any]:
    """One section: `layer` and `class` only when it has one, `data` only when not empty, `arrays` (the keys it
    stored in arrays.npz) only when given and not empty."""
    entry: dict[str, Any] = {"id": id, "kind": kind, "title": title}
    if layer is not None:
        entry["layer"] = layer
    if class_name is not None:
        entry["class"] = class_name
    entry["figures"] = list(figures)
    if data:
        entry["data"] = data
    if arrays:
        entry["arrays"] = sorted(arrays)
    return entry


def image_entry(id: str, name: str, path: str, label: str | None, original_size: Sequence[int],
                conversion: str, prediction: Mapping[str, Any] | None, detail: bool) -> dict[str, Any]:
    """One image of the set, with its top prediction from the dataset pass (None without one)."""
    return {"id": id, "name": name, "path": path, "label": label, "original_size": list(original_size),
            "conversion": conversion, "prediction": prediction, "detail": detail}


def report_dict(*, versions: Mapping[str, Any], created: str, title: str, model: Mapping[str, Any],
                options: Mapping[str, Any], images: Sequence[Mapping[str, Any]], class_names: Sequence[str],
                sections: Sequence[Mapping[str, Any]], warnings: Sequence[str], seconds: Mapping[str, Any],
                arrays: str | None, extra: Mapping[str, Any]) -> dict[str, Any]:
    """report.json as a JSON-safe dict. `extra` holds the top-level lists and objects sections add ("heatmaps",
    "predictions", "evaluation", a diff's "diff", ...); none of them replaces a field above."""
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "generator": GENERATOR,
        "versions": versions,
        "created": created,
        "title": title,
        "model": model,
        "options": options,
        "images": list(images),
        "class_names": list(class_names),
        "sections": list(sections),
        "warnings": list(warnings),
        "seconds": seconds,
        "arrays": arrays,
    }
    for key, value in extra.items():
        manifest.setdefault(key, value)
    return json_safe(manifest)


def manifest_text(manifest: Mapping[str, Any]) -> str:
    """The bytes of report.json (as text): indented, UTF-8 as is, no NaN (`json_safe` made them null)."""
    return json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> Path:
    """Write folder/report.json; render calls this inside its staging folder (the swap makes it atomic)."""
    path = Path(folder) / MANIFEST
    path.write_text(manifest_text(manifest), encoding="utf-8")
    return path
