"""Which filter-pattern search should be the default? Every method against the tutorials' loop, on several models.

The yardstick (`tutorial`): normalised gradient ascent as the tutorials write it: from grey plus 20% noise
(0.5 + U(-0.1, 0.1) of the range), each step adds 0.05 of the range times the gradient divided by its RMS,
unclipped, and the image is clipped to the valid range at the end. Every method runs the same number of ascent
steps (40) on the same filters, each pattern driving the layer's block output (a conv followed by batch norm and
an activation drives the activation's output). Printed per model, layer and method: the mean activation reached
(float32, on the stored pattern), its ratio to the tutorial's, the scorecard's robust activation and saturation
(share of pixel values within 1% of the range's ends) and the seconds of the search (tracing included). Then per
model and method: the mean and lowest ratio over the layers and the highest saturation past the first layer.

Models: the bundled example CNN; two CNNs that `tests/pattern_models.py` trains in seconds (RGB conv -> BN -> ReLU
blocks; a greyscale mini-Xception with separable convs); VGG16, ResNet50 and MobileNetV2 with random weights
(`weights=None`: nothing is downloaded). Small sizes and few filters keep it to minutes on 2 cores.

    python benchmarks/pattern_methods.py [--models example,rgb,grey,vgg16,resnet50,mobilenetv2]
        [--methods tutorial,projected,projected-free,logit,logit-free,pixel,fourier,maco] [--filters 8] [--steps 40]
        [--out pattern_methods.png]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np

# (layers, pattern size, preprocessing) per model; layers whose block output follows a non-linearity.
MODELS = {
    "example": (("conv1", "conv2", "conv3"), 64, "scale"),
    "rgb": (("b1_conv", "b2_conv", "b3_conv"), 32, "scale"),
    "grey": (("stem_conv", "m1a_conv", "m2_conv"), 32, "scale"),
    "vgg16": (("block1_conv2", "block3_conv1", "block5_conv1"), 64, "caffe"),
    "resnet50": (("conv1_conv", "conv2_block1_2_conv", "conv3_block1_2_conv", "conv4_block1_1_conv"), 64, "caffe"),
    "mobilenetv2": (("Conv1", "block_3_depthwise", "block_6_expand", "block_13_depthwise"), 64, "tf"),
}


def load(name: str):
    import keras

    keras.utils.set_random_seed(0)
    if name == "example":
        from reportgen.example import example_model_path
        from reportgen.loading.models import load_model

        return load_model(example_model_path()).model
    if name in ("rgb", "grey"):
        from pattern_models import train_model

        model, accuracy = train_model(keras, name)
        print(f"{name}: trained, held-out accuracy {accuracy:.0%} (4 classes)")
        return model
    build = {"vgg16": keras.applications.VGG16, "resnet50": keras.applications.ResNet50,
             "mobilenetv2": keras.applications.MobileNetV2}[name]
    return build(weights=None, include_top=False, input_shape=(None, None, 3) if name != "mobilenetv2" else
                 (96, 96, 3))


def variants() -> dict:
    """Method name -> Method: the report's methods plus the variants measured while choosing the default."""
    from tutorial import TutorialAscent

    from reportgen.techniques import pattern_params as pp

    return {
        "tutorial": TutorialAscent(),
        "projected": pp.ProjectedAscent(),
        "logit": pp.LogitAscent(),
        "pixel": pp.PixelAscent(),
        "fourier": pp.FourierAscent(),
        "maco": pp.MacoAscent(),
        # Measured while choosing: the default without its saturation budget and with a cosine decay; logit
        # without its saturation penalty, with jitter, with decorrelated colour, and Fourier with a cosine schedule.
        "projected-free": pp.ProjectedAscent(budget=None),
        "projected-cos": pp.ProjectedAscent(learning_rate=0.3, final_rate=0.05),
        "logit-free": pp.LogitAscent(saturation_weight=0.0),
        "logit-jitter": pp.LogitAscent(jitter=pp.Jitter()),
        "logit-decor": pp.LogitAscent(decorrelate=True),
        "fourier-cos": pp.FourierAscent(learning_rate=0.6, final_rate=0.05),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default="tutorial,projected,projected-free,logit,logit-free,pixel,fourier,maco")
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default="pattern_methods.png", help="PNG of every method's grids per layer.")
    args = parser.parse_args()

    import cv2

    from reportgen import figures
    from reportgen.graph import walk_layers
    from reportgen.loading.preprocess import Preprocessor
    from reportgen.techniques.filter_patterns import (
        PatternSettings,
        first_conv,
        score_patterns,
        search_patterns,
    )
    from reportgen.techniques.pattern_params import PixelMap

    methods = variants()
    chosen = args.methods.split(",")
    filters = tuple(range(args.filters))
    print(f"{args.filters} filters per layer, {args.steps} ascent steps, float32; saturated: share of pixel values "
          f"within 1% of the range's ends, near ends: within 5%\n")
    print(f"{'model':<12} {'layer':<22} {'method':<15} {'mean act.':>10} {'x tutorial':>10} {'robust':>7} "
          f"{'saturated':>9} {'near ends':>9} {'seconds':>8}")
    summary = []
    rows = []
    for name in args.models.split(","):
        layers, size, mode = MODELS[name]
        model = load(name)
        first = first_conv(walk_layers(model))
        channels = int(model.inputs[0].shape[-1])
        preprocessor = Preprocessor(mode, channels)
        pixel_map = PixelMap.from_preprocessor(preprocessor)
        scores: dict[str, dict[str, list[float]]] = {m: {} for m in chosen}
        for layer in layers:
            reference = None
            for method_name in chosen:
                settings = PatternSettings(steps=args.steps, height=size, width=size, directions=("ascent",))
                result = search_patterns(model, layer, filters, settings, pixel_map, method=methods[method_name])
                patterns = result.direction("ascent")
                display = preprocessor.invert(patterns.inputs) / 255.0
                card = score_patterns(model, result, "ascent", display)
                activation = float(patterns.activation.mean())
                reference = activation if method_name == "tutorial" else reference
                ratio = activation / reference if reference else float("nan")
                near = float(np.mean((display <= 0.05) | (display >= 0.95)))
                got = scores[method_name]
                for key, value in (("ratio", ratio), ("robust", float(np.nanmean(card.robust))),
                                   ("seconds", result.seconds)):
                    got.setdefault(key, []).append(value)
                if layer != first:  # the first conv's best image is two-level: not counted
                    got.setdefault("saturation", []).append(float(card.saturation.mean()))
                    got.setdefault("near", []).append(near)
                print(f"{name:<12} {layer:<22} {method_name:<15} {activation:>10.4g} {ratio:>9.2f}x "
                      f"{np.nanmean(card.robust):>7.2f} {card.saturation.mean():>9.1%} {near:>9.0%} "
                      f"{result.seconds:>8.2f}")
                sys.stdout.flush()
                tiles = np.clip(display * 255, 0, 255).round().astype(np.uint8)
                if tiles.shape[3] == 1:
                    tiles = np.repeat(tiles, 3, axis=3)
                tiles = np.stack([figures.upscale(tile, max(1, 64 // size)) for tile in tiles])
                grid = figures.tile_grid(tiles, columns=len(filters), pad=3)
                label = np.full((grid.shape[0], 260, 3), figures.BACKGROUND, np.uint8)
                cv2.putText(label, f"{name} {layer} {method_name}", (4, grid.shape[0] // 2 + 4),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.4, (40, 40, 40), 1, cv2.LINE_AA)
                rows.append(np.concatenate([label, grid], axis=1))
        summary.extend((name, m, scores[m]) for m in chosen)
    print(f"\nPer model, over its layers (saturation past the first conv layer):\n{'model':<12} {'method':<15} "
          f"{'mean x tut.':>11} {'min x tut.':>10} {'max sat.':>9} {'max near':>9} {'robust':>7} {'seconds':>8}")
    for name, method_name, got in summary:
        print(f"{name:<12} {method_name:<15} {np.mean(got['ratio']):>10.2f}x {np.min(got['ratio']):>9.2f}x "
              f"{max(got.get('saturation', [0.0])):>9.1%} {max(got.get('near', [0.0])):>9.0%} "
              f"{np.mean(got['robust']):>7.2f} {np.sum(got['seconds']):>8.1f}")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=figures.BACKGROUND) for r in rows]
    cv2.imwrite(args.out, np.concatenate(rows)[:, :, ::-1])
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
