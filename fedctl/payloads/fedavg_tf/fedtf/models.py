"""Keras 3 models; the input shape comes from the data (digits 8x8x1, MNIST 28x28x1, flat F)."""
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
        keras.layers.Dense(classes, activation="softmax"),
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
        keras.layers.Dense(classes, activation="softmax"),
    ], name="mcmahan_cnn")


@register("logreg")
def logreg(input_shape: tuple, classes: int) -> keras.Model:
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(classes, activation="softmax")], name="logreg")


def build_model(spec: str, input_shape: tuple, classes: int, base_dir: str | None = None) -> keras.Model:
    """Build a registered model or a user's `file.py:build_fn(input_shape, classes)`."""
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
