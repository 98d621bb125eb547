"""The anchors of per-layer sections, in one place: the sections use them for their ids, the summary to link
each layer to every section that shows it."""

from __future__ import annotations

from reportgen.analysis import Analysis
from reportgen.report import slugify

METHOD_SLUGS = {"gradcam++": "gradcam-plus-plus"}  # slugify would make it "gradcam"


def section_id(kind: str, analysis: Analysis, layer_path: str) -> str:
    """The anchor of a per-layer section: `weights-conv1`, `feature-maps-conv-base-block1-conv1`."""
    return f"{kind.replace('_', '-')}-{analysis.layer_slugs[layer_path]}"


def cam_section_id(analysis: Analysis, layer_path: str | None, method: str) -> str:
    """The anchor of a CAM method's section: `cam-conv3-gradcam` at a layer, `cam-input-saliency` for methods
    that attribute to the input pixels (`layer_path` None)."""
    slug = METHOD_SLUGS.get(method, slugify(method))
    return f"{section_id('cam', analysis, layer_path)}-{slug}" if layer_path is not None else f"cam-input-{slug}"


CAM_IMAGES = "cam-images"  # the section with one row of maps per detail image


def image_maps_id(analysis: Analysis, image: int) -> str:
    """The anchor of detail image `image`'s row of maps (every CAM method side by side), linked from the
    predictions, the evaluation and the class sections."""
    return f"{CAM_IMAGES}-{analysis.image_ids[image]}"
