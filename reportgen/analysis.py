"""What every section builder shares: the loaded model and its layers, the images, class names, options."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from reportgen.config import ReportOptions
from reportgen.graph import LayerNode, block_outputs, layer_output_shapes, walk_layers
from reportgen.loading.images import ImageSource, LoadedImages
from reportgen.loading.labels import ClassNames
from reportgen.loading.models import LoadedModel
from reportgen.loading.preprocess import Preprocessor
from reportgen.progress import SILENT, Progress
from reportgen.report import EncodedImage, PendingImage, SlugRegistry, slugify
from reportgen.techniques.cams import TargetLayer, choose_target_layer

if TYPE_CHECKING:
    from reportgen.dataset import DatasetResult
    from reportgen.techniques.dataset_examples import ReceptiveField

T = TypeVar("T")


@dataclass
class Analysis:
    """Inputs of every section; built once per report. Derived, expensive things are cached properties."""

    loaded: LoadedModel
    images: LoadedImages
    preprocessor: Preprocessor
    class_names: ClassNames
    options: ReportOptions
    progress: Progress = SILENT
    # Warnings of the steps before the sections (loading, the dataset pass); each section returns its own.
    warnings: list[str] = field(default_factory=list)
    # report.json's `dataset` entry, once the dataset pass ran.
    dataset_manifest: dict[str, Any] | None = None
    # Results computed once from the same inputs, whichever section asks first (the predictions of the detail
    # images feed the predictions, cam and class sections; receptive fields the patterns and dataset examples).
    cache: dict[str, Any] = field(default_factory=dict)
    # The renderer's figure encoder (`render.FigureEncoder`): builders pass each figure's pixels through it as they
    # make them, so only compressed figures pile up (`page=False`: a figure the page only links to). The default
    # keeps raw pixels (render encodes them later).
    encode: Callable[..., np.ndarray | EncodedImage | PendingImage] = lambda pixels, page=True: pixels
    # Draws a plot: `plot(draw, *args)`, `draw` a plotting function of `figures` returning pixels. The renderer's
    # (`FigureEncoder.plot`) has its worker process draw it while the builders go on; the default draws it here.
    plot: Callable[..., np.ndarray | PendingImage] = lambda draw, *args, page=True, **kwargs: draw(*args, **kwargs)
    # Validation-set scale: `images` is the detail sample (per-image figures); `dataset` holds what every image of
    # `all_sources` contributed in the dataset pass, and `detail_indices` where the sample sits among them.
    dataset: DatasetResult | None = None
    all_sources: tuple[ImageSource, ...] = ()
    detail_indices: tuple[int, ...] = ()
    input_size: tuple[int, int] | None = None  # (height, width) the images are resized to
    reader: Any = None  # the `ImageReader` of `all_sources`: a few images are read again (thumbnails, examples)

    def read_images(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Images of `all_sources` at `indices` as RGB uint8 at the model's size (grey ones repeated)."""
        if not indices:
            return []
        wanted = list(dict.fromkeys(int(i) for i in indices))
        loaded = self.reader.load(wanted)
        kept = [i for i in wanted if i not in self.reader.skipped]  # load keeps the order, skips unreadable files
        by_index = dict(zip(kept, loaded.pixels, strict=True))
        out = []
        for i in indices:
            pixels = np.clip(by_index[int(i)], 0, 255).round().astype(np.uint8)
            out.append(np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels)
        return out

    def use_detail(self, images: LoadedImages, indices: Sequence[int]) -> None:
        """Make `images` (the sources at `indices`) the detail sample, after the dataset pass."""
        self.images = images
        self.detail_indices = tuple(int(i) for i in indices)
        for name in ("inputs", "display_images", "image_ids"):
            self.__dict__.pop(name, None)

    def shared(self, key: str, compute: Callable[[], T]) -> T:
        """`compute()` once per report, whichever of the sections that need it run first."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def receptive_fields(self, outputs: Sequence[str]) -> dict[str, ReceptiveField]:
        """Each of `outputs`' receptive field at the model's input size (`dataset_examples.receptive_fields`). The
        first call also measures the dataset examples' layers, so the filter_patterns and dataset_examples
        sections share one forward pass."""
        from reportgen.techniques.dataset_examples import receptive_fields

        known: dict[str, ReceptiveField] = self.cache.setdefault("receptive_fields", {})
        if any(output not in known for output in outputs):
            examples = self.dataset.examples if self.dataset is not None else ()
            wanted = [o for o in dict.fromkeys([*outputs, *(e.output or e.layer for e in examples)]) if o not in known]
            known.update(receptive_fields(self.model, wanted, (*self.size, self.loaded.input_shape[2]),
                                          self.options.seed))
        return {output: known[output] for output in outputs}

    @property
    def model(self) -> Any:
        return self.loaded.model

    @cached_property
    def layers(self) -> list[LayerNode]:
        return walk_layers(self.model)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the model inputs."""
        return self.input_size or tuple(self.images.pixels.shape[1:3])  # type: ignore[return-value]

    @cached_property
    def image_flops(self) -> float:
        """The model's forward FLOPs per image (`precision.forward_flops`)."""
        from reportgen.precision import forward_flops

        return forward_flops(self.layers, self.layer_shapes)

    @cached_property
    def layer_shapes(self) -> dict[str, Any]:
        height, width = self.size
        return layer_output_shapes(self.model, (height, width, self.loaded.input_shape[2]))

    @cached_property
    def layer_slugs(self) -> dict[str, str]:
        """A unique anchor-safe slug per layer path, the same in every section."""
        registry = SlugRegistry()
        return {node.path: registry.take(node.path, "layer") for node in self.layers}

    @cached_property
    def all_image_ids(self) -> list[str]:
        """An anchor-safe id for every image of the set, in list order."""
        registry = SlugRegistry()
        return [registry.take(source.name, "image") for source in self.all_sources or self.images.sources]

    @cached_property
    def image_ids(self) -> list[str]:
        """The detail images' ids (the same as in `all_image_ids`)."""
        if not self.all_sources:
            return self.all_image_ids
        return [self.all_image_ids[i] for i in self.detail_indices]

    @cached_property
    def inputs(self) -> np.ndarray:
        """The images as the model takes them (preprocessed), float32 (N, H, W, C)."""
        return self.preprocessor.apply(self.images.pixels)

    @cached_property
    def display_images(self) -> np.ndarray:
        """The images as RGB uint8 for overlays and thumbnails (gray repeated to 3 channels)."""
        pixels = np.clip(self.images.pixels, 0, 255).round().astype(np.uint8)
        return np.repeat(pixels, 3, axis=3) if pixels.shape[3] == 1 else pixels

    @cached_property
    def fresh_model(self) -> Any:
        """The same architecture freshly initialised (seeded), for 'what training changed' comparisons."""
        from reportgen.techniques.weights import fresh_copy

        return fresh_copy(self.model, self.options.seed)

    @cached_property
    def fresh_layers(self) -> list[LayerNode]:
        return walk_layers(self.fresh_model)

    @cached_property
    def cam_target(self) -> TargetLayer | None:
        """The layer the class activation maps are taken at (`--cam-layer`, else the last conv layer), or None;
        shared by the cam sections and the summary that names it."""
        return choose_target_layer(self.layers, self.layer_shapes, self.options.cam_layer,
                                   blocks=self.block_outputs, classes=self.output_units)

    @cached_property
    def block_outputs(self) -> set[str]:
        """Layers the whole computation passes through (`graph.block_outputs`)."""
        height, width = self.size
        return block_outputs(self.model, (height, width, self.loaded.input_shape[2]))

    @property
    def output_units(self) -> int:
        return len(self.class_names.names)

    def layer_anchor(self, path: str) -> str:
        return f"layer-{self.layer_slugs.get(path) or slugify(path)}"
