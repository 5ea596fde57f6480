"""Dynamic loss scaling for float16 compute (train.mixed_precision) in a hand-written training step.

Under Keras's mixed_float16 policy the activations, and so the gradients flowing back through
them, are float16: gradients below ~6e-8 flush to zero and training stalls. The training step
multiplies the loss by a large scale before the gradient and divides the gradients by it after
(they reach the float32 variables as float32); when a scaled gradient overflows, the step is
skipped and the scale halved; after `period` good steps it doubles. The same rule as
keras.optimizers.LossScaleOptimizer, which the payload's own SGD/Adam steps cannot use.

Graph-safe: every method may be called inside a tf.function (the client's compiled epoch).
"""
from __future__ import annotations

import tensorflow as tf


class DynamicLossScale:
    """The scale and its good-step counter, as tf.Variables (one per Trainer)."""

    def __init__(self, initial: float = 2.0 ** 15, period: int = 2000, minimum: float = 1.0) -> None:
        self.scale = tf.Variable(float(initial), trainable=False, dtype=tf.float32, name="loss_scale")
        self.good = tf.Variable(0, trainable=False, dtype=tf.int64, name="loss_scale_good_steps")
        self.period, self.minimum = int(period), float(minimum)

    def scaled(self, loss: tf.Tensor) -> tf.Tensor:
        """The loss to differentiate (float32 in, float32 out)."""
        return tf.cast(loss, tf.float32) * self.scale

    def unscale(self, grads: list) -> tuple[list, tf.Tensor]:
        """(gradients divided by the scale, whether all are finite); updates the scale. When not
        finite, the caller skips the step (e.g. `tf.where(finite, lr * g, 0)`)."""
        inv = 1.0 / self.scale
        out = [None if g is None else tf.cast(g, tf.float32) * inv for g in grads]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in out if g is not None])
        grow = tf.logical_and(finite, self.good + 1 >= self.period)
        self.scale.assign(tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale),
                                   tf.maximum(self.scale / 2.0, self.minimum)))
        self.good.assign(tf.where(tf.logical_and(finite, tf.logical_not(grow)), self.good + 1,
                                  tf.zeros_like(self.good)))
        return [None if g is None else tf.where(finite, g, tf.zeros_like(g)) for g in out], finite
