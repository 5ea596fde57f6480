"""Keras 3 models; the input shape comes from the data (digits 8x8x1, MNIST 28x28x1, CIFAR 32x32x3, flat F).

Mixed precision (train.mixed_precision): `build_model` sets Keras's global dtype policy before it
builds, so layers compute in float16 while every variable stays float32 (the wire format, the
aggregation and the checkpoints never see float16). The built-in models keep their last layer in
float32: a float16 softmax rounds small probabilities to 0 and the loss to infinity.
"""
from __future__ import annotations

import importlib.util
import math
import os

import keras

from .config import MODELS

REGISTRY: dict = {}


def register(name: str):
    def deco(fn):
        if name in REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        REGISTRY[name] = fn
        return fn
    return deco


@register("mlp")
def mlp(input_shape: tuple, classes: int) -> keras.Model:
    """McMahan et al. 2017 '2NN': two hidden layers of 200 ReLU units, softmax output."""
    return keras.Sequential([
        keras.Input(input_shape), keras.layers.Flatten(),
        keras.layers.Dense(200, activation="relu"),
        keras.layers.Dense(200, activation="relu"),
        keras.layers.Dense(classes, activation="softmax", dtype="float32"),
    ], name="mlp_2nn")


@register("cnn")
def cnn(input_shape: tuple, classes: int) -> keras.Model:
    """McMahan et al. 2017 CNN: 5x5 conv 32, pool, 5x5 conv 64, pool, dense 512 ReLU, softmax."""
    if len(input_shape) == 1:  # flat data of a square image (e.g. 784 -> 28x28x1)
        side = int(math.isqrt(input_shape[0]))
        if side * side != input_shape[0]:
            raise ValueError(f"model: cnn needs image data, got {input_shape[0]} flat features")
        first = [keras.Input(input_shape), keras.layers.Reshape((side, side, 1))]
    else:
        first = [keras.Input(input_shape)]
    return keras.Sequential(first + [
        keras.layers.Conv2D(32, 5, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2, padding="same"),
        keras.layers.Conv2D(64, 5, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2, padding="same"),
        keras.layers.Flatten(),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dense(classes, activation="softmax", dtype="float32"),
    ], name="mcmahan_cnn")


GN_GROUPS = 2  # GroupNorm groups in resnet18 (see resnet18's docstring)


def _conv_gn(x, filters: int, kernel: int, stride: int, name: str):
    """Conv (no bias: the norm's beta is the bias) then GroupNorm."""
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                            kernel_initializer="he_normal", name=f"{name}_conv")(x)
    return keras.layers.GroupNormalization(GN_GROUPS, epsilon=1e-5, name=f"{name}_gn")(x)


def _basic_block(x, filters: int, stride: int, name: str):
    """He et al. 2016 BasicBlock: two 3x3 convs; a 1x1 projection when the shape changes."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_gn(x, filters, 1, stride, f"{name}_proj")
    y = keras.layers.Activation("relu")(_conv_gn(x, filters, 3, stride, f"{name}_a"))
    y = _conv_gn(y, filters, 3, 1, f"{name}_b")
    return keras.layers.Activation("relu")(keras.layers.Add(name=f"{name}_add")([y, shortcut]))


@register("resnet18")
def resnet18(input_shape: tuple, classes: int) -> keras.Model:
    """ResNet-18 for small images (CIFAR's 32x32x3), with GroupNorm instead of BatchNorm.

    CIFAR stem (one 3x3 conv 64, stride 1, no max-pool), four stages of two BasicBlocks with
    64/128/256/512 filters (stride 2 from the second stage on), global average pooling, dense
    softmax: 11.17M weights for 10 classes. BatchNorm's running statistics are per-client data
    statistics that averaging mixes badly under non-IID data; Hsieh et al. 2020 ("The Non-IID Data
    Quagmire of Decentralized Machine Learning") replace it with GroupNorm, which has none. We use
    GN_GROUPS = 2 groups, the setting they report best for ResNets; every stage's width divides by it.
    """
    if len(input_shape) != 3:
        raise ValueError(f"model: resnet18 needs image data (height, width, channels), "
                         f"got examples of shape {tuple(input_shape)}")
    inp = keras.Input(input_shape)
    x = keras.layers.Activation("relu")(_conv_gn(inp, 64, 3, 1, "stem"))
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, stride, f"s{stage + 1}b{block + 1}")
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(classes, activation="softmax", dtype="float32", name="head")(x)
    return keras.Model(inp, out, name="resnet18_gn")


@register("logreg")
def logreg(input_shape: tuple, classes: int) -> keras.Model:
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(classes, activation="softmax", dtype="float32")],
                            name="logreg")


def gpu_visible() -> bool:
    """Whether this process sees a GPU (after fedctl's CUDA_VISIBLE_DEVICES)."""
    import tensorflow as tf  # noqa: PLC0415 - the backend is TensorFlow (training.py sets it)
    return bool(tf.config.list_physical_devices("GPU"))


def precision_policy(mode: str) -> str:
    """The Keras dtype policy for train.mixed_precision `mode`: on -> mixed_float16; auto ->
    mixed_float16 when this process sees a GPU (float16 is slower than float32 on CPUs); off ->
    float32."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"train.mixed_precision: unknown mode {mode!r} (valid: auto, on, off)")
    on = mode == "on" or (mode == "auto" and gpu_visible())
    return "mixed_float16" if on else "float32"


def build_model(spec: str, input_shape: tuple, classes: int, base_dir: str | None = None,
                mixed_precision: str = "off") -> keras.Model:
    """Build a registered model or a user's `file.py:build_fn(input_shape, classes)` under the
    dtype policy of `mixed_precision` (see precision_policy); the policy stays set for the process."""
    keras.mixed_precision.set_global_policy(precision_policy(mixed_precision))
    if spec in REGISTRY:
        return REGISTRY[spec](tuple(input_shape), classes)
    file, _, fn = spec.rpartition(":")
    path = file if os.path.isabs(file) or base_dir is None else os.path.join(base_dir, file)
    if not os.path.exists(path):
        raise ValueError(f"model: {path} not found (valid: {', '.join(MODELS)}, file.py:build_fn)")
    mod_spec = importlib.util.spec_from_file_location("fedtf_user_model", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    build = getattr(mod, fn, None)
    if build is None:
        raise ValueError(f"model: {path} has no function {fn!r}")
    model = build(tuple(input_shape), classes)
    if not isinstance(model, keras.Model):
        raise ValueError(f"model: {spec} returned {type(model).__name__}, not a keras.Model")
    return model
