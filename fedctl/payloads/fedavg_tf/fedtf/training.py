"""Local training and evaluation: one compiled epoch function reused by every virtual client.

The epoch runs entirely inside one tf.function (a tf.while_loop over mini-batches gathered from
the in-memory shard), traced once: its signature has an unknown batch dimension so shards of any
size reuse the same graph. FedProx's proximal term and SCAFFOLD's correction are built into the
graph when that strategy is chosen; their anchors live in tf.Variables assigned per client.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

from .loss_scale import DynamicLossScale  # noqa: E402

_THREADS_SET = False


def configure_threads() -> tuple[int, int]:
    """Cap TF's thread pools (several processes may share a small host).

    FEDTF_INTRA_THREADS (default min(2, cores)) and FEDTF_INTER_THREADS (default 1).
    """
    global _THREADS_SET
    intra = int(os.environ.get("FEDTF_INTRA_THREADS", min(2, os.cpu_count() or 1)))
    inter = int(os.environ.get("FEDTF_INTER_THREADS", 1))
    if not _THREADS_SET:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
            tf.config.threading.set_inter_op_parallelism_threads(inter)
        except RuntimeError:  # runtime already initialised (e.g. in tests): keep what it has
            pass
        configure_gpus()
        _THREADS_SET = True
    return intra, inter


def configure_gpus() -> list[str]:
    """Never map a whole GPU: memory growth on every visible GPU, and a hard per-process limit when
    fedctl says several processes share it (FEDCTL_GPU_MEMORY_MB). fedctl picks the GPU itself with
    CUDA_VISIBLE_DEVICES, so this process sees only its own. Returns what was set, for the log."""
    done = []
    try:
        gpus = tf.config.list_physical_devices("GPU")
    except RuntimeError:
        return done
    limit = os.environ.get("FEDCTL_GPU_MEMORY_MB")
    for gpu in gpus:
        try:
            if limit and limit.isdigit():
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=int(limit))])
                done.append(f"{gpu.name}: limit {limit} MB")
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
                done.append(f"{gpu.name}: memory growth")
        except RuntimeError:  # already initialised: keep what it has
            pass
    return done


def seed_everything(seed: int) -> None:
    keras.utils.set_random_seed(seed)


class WeightLayout:
    """Order, shapes and flat offsets of a model's variables (the wire order)."""

    def __init__(self, model: keras.Model) -> None:
        self.variables = list(model.weights)
        self.shapes = [tuple(v.shape) for v in self.variables]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.size = int(self.offsets[-1])
        trainable_ids = {id(v) for v in model.trainable_variables}
        self.trainable = [i for i, v in enumerate(self.variables) if id(v) in trainable_ids]

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """Views of a flat vector, one per variable."""
        return [flat[self.offsets[i]:self.offsets[i + 1]].reshape(s) for i, s in enumerate(self.shapes)]

    def get(self) -> np.ndarray:
        out = np.empty(self.size, np.float32)
        for i, v in enumerate(self.variables):
            out[self.offsets[i]:self.offsets[i + 1]] = np.asarray(v.numpy(), np.float32).reshape(-1)
        return out

    def set(self, flat: np.ndarray) -> None:
        for v, part in zip(self.variables, self.split(flat)):
            v.assign(part)


class Trainer:
    """Client-side optimiser for one model object, shared by all virtual clients of a process."""

    def __init__(self, model: keras.Model, input_shape: tuple, train_cfg: dict,
                 strategy: str = "fedavg", mu: float = 0.0) -> None:
        self.model = model
        self.layout = WeightLayout(model)
        self.vars = model.trainable_variables
        self.batch_size = int(train_cfg["batch_size"])
        self.epochs = int(train_cfg["epochs"])
        self.lr_value = float(train_cfg["lr"])
        self.optimizer = train_cfg["optimizer"]
        self.prox = strategy == "fedprox"
        self.scaffold = strategy == "scaffold"
        if self.scaffold and self.optimizer != "sgd":  # config.validate refuses it; keep the guard here
            raise ValueError(f"train.optimizer: scaffold needs sgd, got {self.optimizer!r}")
        self.lr = tf.Variable(self.lr_value, dtype=tf.float32, trainable=False)
        # float16 compute (train.mixed_precision): gradients through float16 activations underflow
        # without a loss scale; a step whose scaled gradients overflow is skipped whole
        self.loss_scale = DynamicLossScale() if model.dtype_policy.name == "mixed_float16" else None
        self.mu = tf.Variable(float(mu), dtype=tf.float32, trainable=False)
        zeros = lambda: [tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False) for v in self.vars]  # noqa: E731
        self.anchor = zeros() if self.prox else []
        self.corr = zeros() if self.scaffold else []
        if self.optimizer == "adam":
            self.m, self.v = zeros(), zeros()
            self.t = tf.Variable(0.0, trainable=False)
        spec = [tf.TensorSpec([None, *input_shape], tf.float32), tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None], tf.int32)]
        self._epoch = tf.function(self._epoch_impl, input_signature=spec)
        self._eval = tf.function(self._eval_impl, input_signature=spec[:2])

    # -- graph code ---------------------------------------------------------------------------
    def _epoch_impl(self, x, y, perm):
        n = tf.shape(perm)[0]
        bs = self.batch_size
        total = tf.constant(0.0, tf.float32)
        for i in tf.range((n + bs - 1) // bs):
            start = i * bs
            idx = perm[start:tf.minimum(start + bs, n)]
            xb, yb = tf.gather(x, idx), tf.gather(y, idx)
            with tf.GradientTape() as tape:
                probs = self.model(xb, training=True)
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(yb, probs))
                obj = loss
                if self.prox:
                    obj = obj + self.mu / 2.0 * tf.add_n(
                        [tf.reduce_sum(tf.square(v - a)) for v, a in zip(self.vars, self.anchor)])
                if self.loss_scale is not None:  # scaled on the tape, so the gradient sees it
                    obj = self.loss_scale.scaled(obj)
            if self.loss_scale is None:
                grads, keep = tape.gradient(obj, self.vars), None
            else:
                grads, finite = self.loss_scale.unscale(tape.gradient(obj, self.vars))
                keep = tf.cast(finite, tf.float32)  # 0: an overflowed step changes nothing
            for j, (v, g) in enumerate(zip(self.vars, grads)):
                if self.scaffold:
                    g = g + self.corr[j]
                if self.optimizer == "adam":
                    if j == 0:
                        self.t.assign_add(1.0 if keep is None else keep)
                    m = 0.9 * self.m[j] + 0.1 * g
                    w = 0.999 * self.v[j] + 0.001 * tf.square(g)
                    if keep is not None:
                        m, w = keep * m + (1.0 - keep) * self.m[j], keep * w + (1.0 - keep) * self.v[j]
                    self.m[j].assign(m)
                    self.v[j].assign(w)
                    mhat = self.m[j] / (1.0 - tf.pow(0.9, tf.maximum(self.t, 1.0)))
                    vhat = self.v[j] / (1.0 - tf.pow(0.999, tf.maximum(self.t, 1.0)))
                    step = self.lr * mhat / (tf.sqrt(vhat) + 1e-7)
                    v.assign_sub(step if keep is None else keep * step)
                else:
                    v.assign_sub(self.lr * g if keep is None else keep * self.lr * g)
            total += loss * tf.cast(tf.shape(idx)[0], tf.float32)
        return total / tf.cast(n, tf.float32)

    def _eval_impl(self, x, y):
        probs = self.model(x, training=False)
        loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, probs))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.cast(tf.argmax(probs, -1), tf.int32), y), tf.float32))
        return loss, correct

    # -- python API ---------------------------------------------------------------------------
    def steps(self, n: int) -> int:
        return self.epochs * ((n + self.batch_size - 1) // self.batch_size)

    def train(self, x, y, n: int, rng: np.random.Generator, global_flat: np.ndarray,
              correction: np.ndarray | None = None) -> float:
        """Train the model (already holding `global_flat`) on one shard; return the mean loss of the
        last epoch. `correction` is SCAFFOLD's c - c_i (flat, full layout)."""
        if self.prox:
            parts = self.layout.split(global_flat)
            for a, i in zip(self.anchor, self.layout.trainable):
                a.assign(parts[i])
        if self.scaffold:
            parts = self.layout.split(correction if correction is not None
                                      else np.zeros(self.layout.size, np.float32))
            for c, i in zip(self.corr, self.layout.trainable):
                c.assign(parts[i])
        if self.optimizer == "adam":
            for s in self.m + self.v:
                s.assign(tf.zeros_like(s))
            self.t.assign(0.0)
        loss = 0.0
        for _ in range(self.epochs):
            perm = tf.constant(rng.permutation(n).astype(np.int32))
            loss = float(self._epoch(x, y, perm))
        return loss

    def warmup(self, x, y) -> None:
        """Trace the compiled epoch once (weights are overwritten before any real training)."""
        n = min(int(x.shape[0]), self.batch_size)
        self._epoch(x[:n], y[:n], tf.range(n, dtype=tf.int32))

    def evaluate(self, x, y, batch: int = 4096) -> tuple[float, float]:
        """Mean loss and accuracy of the current model on (x, y)."""
        return self.evaluate_batches(eval_batches(x, y, batch))

    def evaluate_batches(self, batches: list) -> tuple[float, float]:
        """Mean loss and accuracy of the current model on `batches` (from `eval_batches`)."""
        loss, correct, n = 0.0, 0.0, 0
        for xb, yb in batches:
            l, c = self._eval(xb, yb)
            loss += float(l)
            correct += float(c)
            n += int(yb.shape[0])
        return loss / max(n, 1), correct / max(n, 1)


def eval_batches(x, y, batch: int = 4096) -> list:
    """(x, y) as a list of tensor batches. The server's evaluator makes them once: converting its
    test set from numpy every round cost about a tenth of the server's time (py-spy)."""
    return [(tf.constant(x[s:s + batch]), tf.constant(y[s:s + batch])) for s in range(0, len(y), batch)]
