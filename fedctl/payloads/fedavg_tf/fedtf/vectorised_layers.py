"""A Keras model's forward pass over a client axis, for fedtf/vectorised.py.

Weights come stacked, one tensor [C, *shape] per trainable variable (the order of
`model.trainable_variables`); activations keep the clients folded into the batch axis,
[C*B, ...], so layers without weights (pooling, flatten, reshape, activations, adds, concatenates)
run unchanged, and only layers with weights need a client-aware form:

- Dense: one batched matmul [C, B*, in] x [C, in, out];
- Conv2D: one grouped convolution, the clients folded into the channel axis (feature groups = C);
- GroupNormalization: per-sample statistics as Keras computes them, per-client gamma and beta.

Any other layer with weights is handed to the generic path: the model's own `stateless_call`
under `tf.vectorized_map` (which refuses ops it cannot vectorise, e.g. a convolution whose filter
differs per client). A layer with state (BatchNormalization's moving statistics, Dropout's seed
generator) cannot be trained as C independent copies in one call: `Unsupported` says which.
"""
from __future__ import annotations

import keras
import tensorflow as tf


class Unsupported(ValueError):
    """This model cannot be trained with a client axis; the message says why."""


def stateful_layer(model: keras.Model) -> str | None:
    """The first layer that holds non-trainable state, as 'name (Class: variable)', or None."""
    if not model.non_trainable_variables:
        return None
    for layer in model._flatten_layers(include_self=False, recursive=True):  # noqa: SLF001
        own = [v for v in layer.non_trainable_variables]
        if own and not isinstance(layer, keras.Model):
            return f"{layer.name} ({type(layer).__name__}: {own[0].path})"
    return f"{model.name} ({model.non_trainable_variables[0].path})"


def _sublayers(model: keras.Model) -> list:
    return list(model._flatten_layers(include_self=False, recursive=False))  # noqa: SLF001


class Forward:
    """probs[C*B, ...] = model(x[C*B, ...]) with client c's weights on its B rows.

    `kind` is "layers" (the built-in forms above) or "vmap" (stateless_call under
    tf.vectorized_map); the constructor raises Unsupported when neither applies.
    """

    def __init__(self, model: keras.Model, batch: int) -> None:
        why = stateful_layer(model)
        if why is not None:
            raise Unsupported(f"layer {why} holds state that training updates")
        mixed = [layer for layer in model._flatten_layers(include_self=False, recursive=True)  # noqa: SLF001
                 if getattr(layer, "compute_dtype", "float32") != "float32"]
        if mixed:
            raise Unsupported(f"layer {mixed[0].name} computes in {mixed[0].compute_dtype} "
                              f"(mixed precision: the batched forms compute in float32)")
        self.model, self.batch = model, batch
        self.pos = {id(v): i for i, v in enumerate(model.trainable_variables)}
        odd = self._unknown(model)
        self.kind = "layers" if odd is None else "vmap"
        self.why_vmap = odd  # the layer that sent it to the generic path, for the log

    # -- which path ------------------------------------------------------------------------------
    def _unknown(self, model: keras.Model) -> str | None:
        """The first layer with weights that the built-in forms do not cover, or None."""
        if not isinstance(model, keras.Sequential) and not hasattr(model, "_run_through_graph"):
            return f"{model.name} ({type(model).__name__}: a subclassed model)"
        for layer in _sublayers(model):
            if isinstance(layer, keras.Model):
                odd = self._unknown(layer)
                if odd is not None:
                    return odd
            elif layer.trainable_weights and _form(layer) is None:
                return f"{layer.name} ({type(layer).__name__})"
            elif layer.weights and not layer.trainable:
                return f"{layer.name} ({type(layer).__name__}: frozen weights)"
        return None

    # -- the forward pass ------------------------------------------------------------------------
    def __call__(self, w: list, x):
        if self.kind == "vmap":
            return self._vmap(w, x)
        return self._run(self.model, w, x)

    def _run(self, model: keras.Model, w: list, x):
        if isinstance(model, keras.Sequential):
            for layer in model.layers:
                x = self._op(layer, w)(x)
            return x
        return model._run_through_graph([x], operation_fn=lambda op: self._op(op, w))  # noqa: SLF001

    def _op(self, op, w: list):
        """A callable for one graph node: the client-aware form of a layer with weights, the
        operation itself (with training=True where it takes it) otherwise."""
        if isinstance(op, keras.Model):
            return lambda x, **_: self._run(op, w, x)
        form = _form(op) if getattr(op, "trainable_weights", None) else None
        if form is not None:
            mine = [w[self.pos[id(v)]] for v in _weights_of(op)]
            return lambda x, **_: form(op, mine, x, self.batch)

        def call(*args, **kwargs):
            if "training" in getattr(op, "_call_context_args", ()):
                kwargs["training"] = True
            return op(*args, **kwargs)
        return call

    def _vmap(self, w: list, x):
        """The generic path: one stateless_call per client, vectorised by pfor (no while_loop)."""
        xs = tf.reshape(x, [-1, self.batch, *x.shape[1:]])

        def one(args):
            ws, xb = args
            out, _ = self.model.stateless_call(list(ws), [], xb, training=True)
            return out
        out = tf.vectorized_map(one, (tuple(w), xs), fallback_to_while_loop=False)
        return tf.reshape(out, [-1, *out.shape[2:]])


def _weights_of(layer) -> list:
    if type(layer) is keras.layers.GroupNormalization:
        return [v for v in (layer.gamma if layer.scale else None,
                            layer.beta if layer.center else None) if v is not None]
    return [layer.kernel] + ([layer.bias] if layer.use_bias else [])


def _form(layer):
    """The client-aware implementation of a layer with weights, or None (exact types only: a
    subclass may change call())."""
    t = type(layer)
    if t is keras.layers.Dense and not getattr(layer, "lora_enabled", False) \
            and getattr(layer, "quantization_mode", None) is None:
        return _dense
    if t is keras.layers.Conv2D and layer.groups == 1 and layer.data_format == "channels_last" \
            and not getattr(layer, "lora_enabled", False):
        return _conv2d
    if t is keras.layers.GroupNormalization and (layer.axis == -1 or layer.axis == len(layer.input.shape) - 1):
        return _group_norm
    return None


def _unfold(t, c):
    """[C*B, ...] -> [C, B, ...] (static inner dims kept)."""
    return tf.reshape(t, [c, -1, *t.shape[1:]])


def _dense(layer, w: list, x, batch: int):
    kernel = w[0]                                     # [C, in, out]
    c = tf.shape(kernel)[0]
    inner = list(x.shape[1:-1])
    h = tf.reshape(x, [c, -1, x.shape[-1]])           # [C, B*..., in]
    y = tf.linalg.matmul(h, kernel)
    if layer.use_bias:
        y = y + w[1][:, None, :]
    y = tf.reshape(y, [-1, *inner, kernel.shape[-1]])
    return layer.activation(y)


def _conv2d(layer, w: list, x, batch: int):
    kernel = w[0]                                     # [C, kh, kw, cin, cout]
    c = tf.shape(kernel)[0]
    _, h, wd, cin = x.shape
    cout = kernel.shape[-1]
    xs = tf.transpose(tf.reshape(x, [c, batch, h, wd, cin]), [1, 2, 3, 0, 4])
    xs = tf.reshape(xs, [batch, h, wd, -1])           # channels: client-major, cin each
    k = tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [*kernel.shape[1:4], -1])
    y = tf.nn.conv2d(xs, k, strides=list(layer.strides), padding=layer.padding.upper(),
                     dilations=list(layer.dilation_rate))   # grouped: C groups of cin -> cout
    oh, ow = y.shape[1], y.shape[2]
    y = tf.transpose(tf.reshape(y, [batch, oh, ow, -1, cout]), [3, 0, 1, 2, 4])
    if layer.use_bias:
        y = y + w[1][:, None, None, None, :]
    y = tf.reshape(y, [-1, oh, ow, cout])
    return layer.activation(y)


def _group_norm(layer, w: list, x, batch: int):
    """keras GroupNormalization.call with gamma and beta per client."""
    g, ch = layer.groups, x.shape[-1]
    inner = list(x.shape[1:-1])
    xr = tf.reshape(x, [-1, *inner, g, ch // g])
    axes = list(range(1, len(inner) + 1)) + [len(inner) + 2]
    mean, var = tf.nn.moments(xr, axes=axes, keepdims=True)
    inv = tf.math.rsqrt(var + layer.epsilon)
    lead = [1] * (len(inner) + 1)                     # B and the spatial axes
    c = tf.shape(w[0])[0] if w else None
    if c is None:
        return tf.reshape(xr * inv - mean * inv, [-1, *inner, ch])
    inv, mean, xu = _unfold(inv, c), _unfold(mean, c), _unfold(xr, c)
    i = 0
    if layer.scale:
        inv = inv * tf.reshape(w[i], [c, *lead, g, ch // g])
        i += 1
    res = -mean * inv
    if layer.center:
        res = res + tf.reshape(w[i], [c, *lead, g, ch // g])
    return tf.reshape(xu * inv + res, [-1, *inner, ch])
