"""Every name set a user can choose from, declared once: section kinds, CAM methods, filter-pattern methods,
preprocessing modes, engines.

The command line's choices and help, the TOML config's checks, `ReportOptions`' validation, the report's section
order, the dataset pass's plan and the page budget all read these tables; a new section or method is one entry here
(and its code). This module imports nothing but the standard library, so `reportgen --help` stays instant.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SectionKind:
    """One kind of report section, in report order (`SECTIONS`)."""

    name: str
    builder: str  # "module:function" under reportgen.sections: (Analysis, earlier results) -> SectionResult
    dataset_pass: bool  # needs every image streamed through the model once (the dataset pass)
    plots: bool  # draws plots (the plotting worker starts for it)
    embed_rank: int  # the page budget serves lower ranks first: what the model does before how its insides look
    after: tuple[str, ...] = ()  # kinds whose results it uses when they ran in the same report
    # Options it reads that name parts of the model (layers, classes, filters): checked against the model before
    # the first section runs, when a kind that reads them is in the report.
    model_options: tuple[str, ...] = ()
    link: str | None = None  # the label of a link to its section of a layer, in the summary's layer table

    def build(self) -> Callable[..., Any]:
        module, function = self.builder.split(":")
        return getattr(importlib.import_module(f"reportgen.sections.{module}"), function)


SECTIONS: tuple[SectionKind, ...] = (
    SectionKind("summary", "summary:build", dataset_pass=False, plots=False, embed_rank=0,
                model_options=("cam_layer",)),
    SectionKind("weights", "weights:build", dataset_pass=False, plots=True, embed_rank=8, link="weights"),
    SectionKind("feature_maps", "feature_maps:build", dataset_pass=True, plots=False, embed_rank=7,
                model_options=("layers",), link="feature maps"),
    SectionKind("filter_patterns", "filter_patterns:build", dataset_pass=False, plots=False, embed_rank=6,
                model_options=("filter_indices",), link="patterns"),
    SectionKind("dataset_examples", "dataset_examples:build", dataset_pass=True, plots=False, embed_rank=5,
                after=("filter_patterns",), link="examples"),
    SectionKind("predictions", "predictions:build", dataset_pass=True, plots=True, embed_rank=2,
                model_options=("classes",)),
    SectionKind("evaluation", "evaluation:build", dataset_pass=True, plots=True, embed_rank=1),
    SectionKind("data_health", "data_health:build", dataset_pass=True, plots=True, embed_rank=2),
    SectionKind("cam", "cams:build", dataset_pass=True, plots=False, embed_rank=3,
                model_options=("cam_layer", "classes")),
    SectionKind("class", "classes:build", dataset_pass=True, plots=False, embed_rank=4,
                model_options=("cam_layer", "classes")),
)


def section_names() -> tuple[str, ...]:
    """Every section kind, in report order."""
    return tuple(kind.name for kind in SECTIONS)


def section_kind(name: str) -> SectionKind:
    return next(kind for kind in SECTIONS if kind.name == name)


@dataclass(frozen=True)
class Choice:
    """One name a user may choose (a mode, an engine), with what it is."""

    name: str
    summary: str


@dataclass(frozen=True)
class CamMethodInfo:
    """A --cam-methods value: `function` names its function in `techniques/cams/methods.py`
    (MethodBatch -> maps)."""

    name: str
    label: str
    function: str
    resolution: str  # "layer": maps at the target layer's size; "input": at the image's size
    reference: str
    cost: str  # passes per batch of images, for the report


CAM_METHODS: tuple[CamMethodInfo, ...] = (
    CamMethodInfo("gradcam", "Grad-CAM", "gradcam", "layer", "Selvaraju et al., ICCV 2017",
                  "shares one forward and one vectorised backward pass with Grad-CAM++ and LayerCAM"),
    CamMethodInfo("gradcam++", "Grad-CAM++", "gradcam_plus_plus", "layer", "Chattopadhay et al., WACV 2018",
                  "shares one forward and one vectorised backward pass with Grad-CAM and LayerCAM"),
    CamMethodInfo("layercam", "LayerCAM", "layercam", "layer", "Jiang et al., IEEE TIP 2021",
                  "shares one forward and one vectorised backward pass with Grad-CAM and Grad-CAM++"),
    CamMethodInfo("scorecam", "Score-CAM", "scorecam", "layer",
                  "Wang et al., CVPR-W 2020 (Faster Score-CAM channel cap)",
                  "one forward pass per kept channel per image"),
    CamMethodInfo("saliency", "Gradient saliency", "saliency", "input", "Simonyan et al., ICLR-W 2014",
                  "one full forward and backward pass"),
    CamMethodInfo("smoothgrad", "SmoothGrad", "smoothgrad", "input", "Smilkov et al., 2017",
                  "one full forward and backward pass per noise sample"),
    CamMethodInfo("integrated_gradients", "Integrated Gradients", "integrated_gradients", "input",
                  "Sundararajan et al., ICML 2017", "one full forward and backward pass per step"),
)
DEFAULT_CAM_METHODS = ("gradcam", "gradcam++", "layercam")


@dataclass(frozen=True)
class PatternMethodInfo:
    """A --pattern-method value: `parameters` names its class in `techniques/pattern_params.py`."""

    name: str
    parameters: str
    summary: str  # what the report's filter-pattern overview says of it


PATTERN_METHODS: tuple[PatternMethodInfo, ...] = (
    PatternMethodInfo("projected", "ProjectedAscent",
                      "Adam on the pixels, each step projected onto the valid images with at most 10% of their values "
                      "within 1% of the range's ends (the first conv layer, whose best image is two-level, only "
                      "onto the valid range), so nothing is clipped afterwards"),
    PatternMethodInfo("logit", "LogitAscent",
                      "pixels through a sigmoid, Adam on their logits with a cosine learning-rate decay, and a "
                      "penalty that keeps pixels off the ends of the range (between 4.7% and 95.3%), so nothing is "
                      "clipped"),
    PatternMethodInfo("fourier", "FourierAscent",
                      "a Fourier-space image with decorrelated colour (Lucid's parameterisation), updated with Adam "
                      "while each ascent step sees it slightly jittered, scaled and rotated"),
    PatternMethodInfo("pixel", "PixelAscent", "gradient steps on the pixels, each normalised by its RMS (the "
                      "tutorials' method)"),
    PatternMethodInfo("maco", "MacoAscent",
                      "only the phase of a Fourier-space image is optimised, its magnitude fixed at natural images' "
                      "1/f (MACO, Fel et al. 2023), with decorrelated colour, updated with Adam while each ascent "
                      "step sees it slightly jittered, scaled and rotated"),
)
DEFAULT_PATTERN_METHOD = "projected"

PREPROCESS_MODES: tuple[Choice, ...] = (
    Choice("auto", "a keras.applications model gets its own preprocess_input, a model that starts with "
                   "Rescaling gets raw pixels, anything else pixels/255"),
    Choice("scale", "pixels / 255"),
    Choice("none", "raw 0-255 pixels"),
    Choice("caffe", "BGR with the ImageNet means subtracted"),
    Choice("tf", "pixels scaled to -1..1"),
    Choice("torch", "pixels / 255 standardised with the ImageNet means and deviations"),
)

ENGINES: tuple[Choice, ...] = (
    Choice("local", "this process"),
    Choice("ray", "Ray actors, one model each, on a local or remote cluster (pip install 'reportgen[ray]')"),
)


def names(choices: tuple[Any, ...]) -> tuple[str, ...]:
    """The names of a table's entries (`CAM_METHODS`, `PREPROCESS_MODES`...), in order."""
    return tuple(choice.name for choice in choices)


def cam_method(name: str) -> CamMethodInfo:
    return next(info for info in CAM_METHODS if info.name == name)


def pattern_method(name: str) -> PatternMethodInfo:
    return next(info for info in PATTERN_METHODS if info.name == name)


def resolve_sections(requested: Sequence[str] | None) -> tuple[str, ...]:
    """The section kinds to build, in report order: every kind, or those --sections names (checked here, before
    anything heavy is imported, for the command line and the API alike)."""
    from reportgen.errors import InputError

    known = section_names()
    if not requested:
        return known
    unknown = [s for s in requested if s not in known]
    if unknown:
        raise InputError(f"--sections: unknown section {', '.join(unknown)}; choose from {', '.join(known)}")
    return tuple(s for s in known if s in requested)
