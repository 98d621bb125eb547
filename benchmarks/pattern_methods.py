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
        [--methods tutorial,logit,logit-free,pixel,fourier,maco] [--filters 8] [--steps 40]
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
    from reportgen.techniques import pattern_params as pp

    return {
        "tutorial": pp.TutorialAscent(),
        "logit": pp.LogitAscent(),
        "pixel": pp.PixelAscent(),
        "fourier": pp.FourierAscent(),
        "maco": pp.MacoAscent(),
        # Measured while choosing: the default without its saturation penalty, with jitter, with decorrelated
        # colour, and Fourier with a cosine schedule.
        "logit-free": pp.LogitAscent(saturation_weight=0.0),
        "logit-jitter": pp.LogitAscent(jitter=pp.Jitter()),
        "logit-decor": pp.LogitAscent(decorrelate=True),
        "fourier-cos": pp.FourierAscent(learning_rate=0.6, final_rate=0.05),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default="tutorial,logit,logit-free,pixel,fourier,maco")
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default="pattern_methods.png", help="PNG of every method's grids per layer.")
    args = parser.parse_args()

    import cv2

    from reportgen import figures
    from reportgen.loading.preprocess import Preprocessor
    from reportgen.techniques.filter_patterns import PatternSettings, score_patterns, search_patterns
    from reportgen.techniques.pattern_params import PixelMap

    methods = variants()
    chosen = args.methods.split(",")
    filters = tuple(range(args.filters))
    print(f"{args.filters} filters per layer, {args.steps} ascent steps, float32\n")
    header = f"{'model':<12} {'layer':<22} {'method':<12} {'mean act.':>10} {'x tutorial':>10} {'robust':>7} " \
             f"{'saturated':>9} {'seconds':>8}"
    print(header)
    summary = []
    rows = []
    for name in args.models.split(","):
        layers, size, mode = MODELS[name]
        model = load(name)
        channels = int(model.inputs[0].shape[-1])
        preprocessor = Preprocessor(mode, channels)
        pixel_map = PixelMap.from_preprocessor(preprocessor)
        ratios: dict[str, list[float]] = {m: [] for m in chosen}
        saturation: dict[str, list[float]] = {m: [] for m in chosen}
        for depth, layer in enumerate(layers):
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
                ratios[method_name].append(ratio)
                if depth > 0:
                    saturation[method_name].append(float(card.saturation.mean()))
                print(f"{name:<12} {layer:<22} {method_name:<12} {activation:>10.4g} {ratio:>9.2f}x "
                      f"{np.nanmean(card.robust):>7.2f} {card.saturation.mean():>9.1%} {result.seconds:>8.2f}")
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
        for method_name in chosen:
            summary.append((name, method_name, float(np.mean(ratios[method_name])), float(np.min(ratios[method_name])),
                            max(saturation[method_name], default=0.0)))
    print(f"\n{'model':<12} {'method':<12} {'mean x tut.':>11} {'min x tut.':>10} {'max sat. past layer 1':>22}")
    for name, method_name, mean, low, sat in summary:
        print(f"{name:<12} {method_name:<12} {mean:>10.2f}x {low:>9.2f}x {sat:>22.1%}")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=figures.BACKGROUND) for r in rows]
    cv2.imwrite(args.out, np.concatenate(rows)[:, :, ::-1])
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
