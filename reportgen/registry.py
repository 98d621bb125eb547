"""Every name set a user can choose from, declared once: section kinds, CAM methods, filter-pattern methods,
preprocessing modes, engines.

The command line's choices and help, the TOML config's checks, `ReportOptions`' validation, the report's section
order, the dataset pass's plan and the page budget all read these tables; a new section or method is one entry here
(and its code). This module imports nothing but the standard library, so `reportgen --help` stays instant.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
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
    """One name a user may choose (a method, a mode), with what it is."""

    name: str
    summary: str


CAM_METHODS: tuple[Choice, ...] = (
    Choice("gradcam", "Grad-CAM: activations weighted by their spatially averaged gradients"),
    Choice("gradcam++", "Grad-CAM++: positive gradients weighted per location"),
    Choice("layercam", "LayerCAM: activations weighted by their positive gradients, location by location"),
    Choice("scorecam", "Score-CAM: each channel weighted by the class probability of the image it masks"),
    Choice("saliency", "the absolute input gradient"),
    Choice("smoothgrad", "the input gradient averaged over noisy copies"),
    Choice("integrated_gradients", "input gradients integrated from a black image"),
)
DEFAULT_CAM_METHODS = ("gradcam", "gradcam++", "layercam")

PATTERN_METHODS: tuple[Choice, ...] = (
    Choice("projected", "Adam on the pixels, each step projected onto the valid images (the default)"),
    Choice("logit", "pixels through a sigmoid, Adam on their logits"),
    Choice("fourier", "a Fourier-space image with decorrelated colour, jittered (Lucid)"),
    Choice("pixel", "gradient steps on the pixels, normalised by their RMS (the tutorials')"),
    Choice("maco", "the phase of a Fourier-space image with a natural 1/f magnitude (MACO)"),
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
    Choice("ray", "Ray Data (pip install 'reportgen[ray]')"),
)


def names(choices: tuple[Choice, ...]) -> tuple[str, ...]:
    return tuple(choice.name for choice in choices)
