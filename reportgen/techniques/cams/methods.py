"""The CAM methods: each a function of the same `MethodBatch` returning maps (B, T, h, w). `registry.CAM_METHODS`
names them (with their labels, references and costs); `METHODS` pairs each entry with its function here."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from reportgen import registry, seeds
from reportgen.techniques.cams.model_functions import ModelFunctions


@dataclass(frozen=True)
class CamSettings:
    """Knobs of the costlier methods; the defaults keep a CPU run to seconds per image."""

    batch_size: int = 16  # images per layer pass
    scorecam_channels: int = 32  # Faster Score-CAM: only the channels with the largest spatial variance
    smoothgrad_samples: int = 16  # Smilkov et al. use 50; 16 already averages most of the noise out
    smoothgrad_noise: float = 0.15  # noise std as a share of the input's value range (the paper's 10-20%)
    ig_steps: int = 32  # Riemann midpoint steps from the black image to the input
    seed: int = 0
    curves_dtype: str = "float32"  # the deletion and insertion curves' arithmetic (`precision.ranking_dtype`)
    # Images per forward pass of the curves (inference only, no tape): None for 4 x batch_size; a report without
    # --batch-size sets it from the layers' output sizes (`curve_batch_size`).
    curve_batch_size: int | None = None


@dataclass(frozen=True)
class MethodBatch:
    """Everything a method may use for B images and their T class slots (padded by repeating a class)."""

    inputs: np.ndarray  # (B, H, W, C) model inputs
    slots: np.ndarray  # (B, T) class index of each slot
    activations: np.ndarray | None  # (B, h, w, K) target layer output (None without a target layer)
    gradients: np.ndarray | None  # (B, T, h, w, K) d class score / d activations
    model: ModelFunctions
    settings: CamSettings
    baseline: np.ndarray  # (C,) the model input of a black pixel
    value_range: float  # span of valid model input values


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _weighted_sum(activations: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ReLU(sum_k w_k A_k) for every slot: activations (B, h, w, K), weights (B, T, K) -> (B, T, h, w)."""
    return _relu(np.einsum("bhwk,btk->bthw", activations, weights, optimize=True))


def gradcam(batch: MethodBatch) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017, eq. 1-2): channel weights are the spatially averaged gradients."""
    return _weighted_sum(batch.activations, batch.gradients.mean(axis=(2, 3)))


def gradcam_plus_plus(batch: MethodBatch) -> np.ndarray:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19): pixel-wise weights
    alpha_ij = g_ij^2 / (2 g_ij^2 + g_ij^3 * sum_ab A_ab), with g the gradient at (i, j) and the sum over the
    whole map of channel k. With the exponential of the score the 2nd and 3rd derivatives are powers of the 1st,
    so one backward pass suffices (as in the authors' code)."""
    grads, acts = batch.gradients, batch.activations[:, None]
    grads2 = grads * grads
    denominator = 2.0 * grads2 + grads2 * grads * np.sum(acts, axis=(2, 3), keepdims=True)
    alpha = np.divide(grads2, denominator, out=np.zeros_like(grads2), where=denominator != 0)
    return _weighted_sum(batch.activations, np.sum(alpha * _relu(grads), axis=(2, 3)))


def layercam(batch: MethodBatch) -> np.ndarray:
    """LayerCAM (Jiang et al. 2021, eq. 5-6): every position weighted by its own positive gradient."""
    return _relu(np.sum(_relu(batch.gradients) * batch.activations[:, None], axis=-1))


def scorecam(batch: MethodBatch) -> np.ndarray:
    """Score-CAM (Wang et al. 2020, Algorithm 1): each channel, upsampled and scaled to [0, 1], masks the input;
    its weight is the class probability of the masked input. Gradient-free, one forward pass per channel, so
    only the `scorecam_channels` channels of largest spatial variance are used (Faster Score-CAM)."""
    import cv2

    acts = batch.activations
    b, h, w, k = acts.shape
    height, width = batch.inputs.shape[1:3]
    keep = min(k, batch.settings.scorecam_channels)
    out = np.zeros((b, batch.slots.shape[1], h, w), np.float32)
    for i in range(b):
        channels = np.argsort(-acts[i].reshape(h * w, k).var(axis=0), kind="stable")[:keep]
        maps = acts[i][:, :, channels]
        masks = np.stack([cv2.resize(maps[:, :, j], (width, height), interpolation=cv2.INTER_LINEAR)
                          for j in range(keep)])
        low, high = masks.min(axis=(1, 2), keepdims=True), masks.max(axis=(1, 2), keepdims=True)
        masks = np.divide(masks - low, high - low, out=np.zeros_like(masks), where=high > low)
        probs = batch.model.probabilities(batch.inputs[i][None] * masks[..., None])  # (keep, classes)
        weights = probs[:, batch.slots[i]].T  # (T, keep)
        out[i] = _relu(np.einsum("hwk,tk->thw", maps, weights))
    return out


def saliency(batch: MethodBatch) -> np.ndarray:
    """Gradient saliency (Simonyan et al. 2014): |d score / d pixel|, the largest over colour channels."""
    return np.abs(batch.model.input_gradients(batch.inputs, batch.slots)).max(axis=-1)


def smoothgrad(batch: MethodBatch) -> np.ndarray:
    """SmoothGrad (Smilkov et al. 2017): the input gradient averaged over noisy copies of the image. Each image
    draws its noise from its own generator (`seeds.CAM_IMAGE`: from the image's values), so its map does not depend
    on batching or order."""
    rngs = [seeds.rng(batch.settings.seed, seeds.CAM_IMAGE, image) for image in batch.inputs]
    sigma = batch.settings.smoothgrad_noise * batch.value_range
    total = np.zeros((*batch.slots.shape, *batch.inputs.shape[1:]), np.float32)
    for _ in range(batch.settings.smoothgrad_samples):
        noise = np.stack([rng.normal(0.0, sigma, batch.inputs.shape[1:]) for rng in rngs]).astype(np.float32)
        total += batch.model.input_gradients(batch.inputs + noise, batch.slots)
    return np.abs(total / max(1, batch.settings.smoothgrad_samples)).max(axis=-1)


def integrated_gradients_attributions(batch: MethodBatch) -> np.ndarray:
    """Integrated Gradients (Sundararajan et al. 2017, eq. 3, midpoint rule) from a black image: (B, T, H, W, C)
    attributions whose sum approximates score(input) - score(black) (completeness)."""
    steps = max(1, batch.settings.ig_steps)
    baseline = np.broadcast_to(batch.baseline.astype(np.float32), batch.inputs.shape)
    delta = batch.inputs - baseline
    total = np.zeros((*batch.slots.shape, *batch.inputs.shape[1:]), np.float32)
    for step in range(steps):
        total += batch.model.input_gradients(baseline + (step + 0.5) / steps * delta, batch.slots)
    return delta[:, None] * total / steps


def integrated_gradients(batch: MethodBatch) -> np.ndarray:
    """Integrated Gradients map: |sum of a pixel's attributions over colour channels|."""
    return np.abs(integrated_gradients_attributions(batch).sum(axis=-1))


@dataclass(frozen=True)
class CamMethod:
    name: str  # the --cam-methods value
    label: str
    function: Callable[[MethodBatch], np.ndarray]
    resolution: str  # "layer": maps at the target layer's size; "input": at the image's size
    reference: str
    cost: str  # passes per batch of images, for the report


def method(name: str) -> CamMethod:
    """The --cam-methods value `name`, as `registry.CAM_METHODS` declares it, with its function from this module."""
    info = registry.cam_method(name)
    return CamMethod(info.name, info.label, globals()[info.function], info.resolution, info.reference, info.cost)


class _Methods(Mapping[str, CamMethod]):
    """`METHODS[name]`: every method of `registry.CAM_METHODS`, read from it when asked (not copied at import)."""

    def __getitem__(self, name: str) -> CamMethod:
        if name not in registry.names(registry.CAM_METHODS):
            raise KeyError(name)
        return method(name)

    def __iter__(self) -> Iterator[str]:
        return iter(registry.names(registry.CAM_METHODS))

    def __len__(self) -> int:
        return len(registry.CAM_METHODS)


METHODS: Mapping[str, CamMethod] = _Methods()
