"""Vectorised virtual clients: the clients of one process that train together (a sync round, or an
async wave) train as ONE computation with a client axis.

Weights are stacked [C, *shape] per variable; every SGD step of every client is one batched step
(fedtf/vectorised_layers.py: batched matmuls, grouped convolutions); the whole local training
(all epochs) is one tf.function, a tf.while_loop over steps. Same math as the sequential Trainer
(fedtf/training.py): the same start weights, each client's batches in the order its own rng gives
sequentially (one permutation per epoch), the same mean loss of a partial last batch (a per-sample
mask), plain SGD or Adam with the same lr, FedProx's mu/2 ||w - w_start||^2 and SCAFFOLD's
correction (c - c_i) per client. Shards of different sizes: a client that has run out of steps
makes masked no-op steps until the longest is done. Memory stays bounded: at most `chunk` clients
at once (train.vectorize_chunk, or what FEDTF_VECTORIZE_MB, default 2048, holds).

`train_clients` is the plain entry point (a benchmark's "limit": no server, no HTTP).

Known limit: "the same math" is up to float rounding (batched kernels sum in another order, ~1e-7),
and a max-pool on data with flat regions (clipped or MNIST-like images: equal inputs give equal
conv outputs) turns that rounding into a different choice among tied maxima, so the gradient goes
to another position: after ten CNN steps on MNIST-shaped synthetic data single weights differed by
~1e-2 (either way: a per-client convolution in place of the grouped one showed it on other data).
Dense models, and CNNs on data without ties, agree within 1e-5 (tests/payload/test_vectorised.py).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from . import training  # sets TF's env defaults before TensorFlow loads
from .vectorised_layers import Forward, Unsupported

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402


@dataclass
class Job:
    """One client's local training: its rows [offset, offset+n) of the pool (or, with `rows`,
    those rows of it: the pool is then the whole training set), its rng (which gives one
    permutation per epoch, as in the sequential mode), its start weights (flat, wire order) and
    SCAFFOLD's correction c - c_i (flat) or None."""
    offset: int
    n: int
    rng: np.random.Generator
    start: np.ndarray
    correction: np.ndarray | None = None
    rows: np.ndarray | None = None


@dataclass
class Result:
    weights: np.ndarray   # flat, wire order
    loss: float           # mean loss of the last epoch, as Trainer.train returns it
    train_s: float        # the client's share of its chunk's wall time (by steps)


class VectorTrainer:
    """Trains many clients of one model at once; built only when the model allows it
    (Unsupported otherwise, with the reason)."""

    def __init__(self, model: keras.Model, input_shape: tuple, train_cfg: dict,
                 strategy: str = "fedavg", mu: float = 0.0) -> None:
        self.model = model
        self.layout = training.WeightLayout(model)
        self.batch = int(train_cfg["batch_size"])
        self.epochs = int(train_cfg["epochs"])
        self.lr = float(train_cfg["lr"])
        self.adam = train_cfg["optimizer"] == "adam"
        self.prox, self.scaffold = strategy == "fedprox", strategy == "scaffold"
        self.mu = float(mu)
        self.forward = Forward(model, self.batch)
        # wire order (model.weights) -> trainable order; Forward refused non-trainable weights
        pos = {id(v): i for i, v in enumerate(model.weights)}
        self.order = [pos[id(v)] for v in model.trainable_variables]
        self.shapes = [tuple(v.shape) for v in model.trainable_variables]
        stacked = [tf.TensorSpec([None, *s], tf.float32) for s in self.shapes]
        spec = [tf.TensorSpec([None, *input_shape], tf.float32), tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None, None, self.batch], tf.int32),
                tf.TensorSpec([None, None, self.batch], tf.float32),
                tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.float32),
                stacked, stacked if self.scaffold else []]
        self._fn = tf.function(self._impl, input_signature=spec)
        # XLA compiles the whole loop (the step alone was slower than no XLA: one launch per step),
        # once per shape (clients, steps, pool rows), in the training call from the second time a
        # shape comes: a shape seen once costs no compile (steps are padded up to 2^(k/4), <= 19%
        # more, so that few shapes come). Not on a thread of its own beside the plain graph: under
        # load that starved a client process's poll past the server's goodbye (a fedbuff test).
        self.xla = _use_xla(model, self.forward.kind)
        self.chunk = _chunk(train_cfg.get("vectorize_chunk"), model, self.batch, self.adam)
        self._fn_xla = tf.function(self._impl, input_signature=spec, jit_compile=True) if self.xla else None
        self.shapes_seen: dict[tuple, int] = {}
        self.xla_error: str | None = None

    # -- graph code ---------------------------------------------------------------------------
    def _impl(self, x, y, idx, mask, active, lossw, w0, corr):
        c, steps = tf.shape(idx)[0], tf.shape(idx)[1]
        zeros = tuple(tf.zeros_like(v) for v in w0) if self.adam else ()
        state0 = (tf.constant(0), tuple(w0), tf.zeros([c]), zeros, zeros, tf.zeros([c]))

        def body(s, w, total, m, v, t):
            rows = tf.reshape(idx[:, s, :], [-1])
            w, loss, m, v, t = self._step(w, tuple(w0), tuple(corr), m, v, t, tf.gather(x, rows),
                                             tf.gather(y, rows), mask[:, s, :], active[:, s])
            return s + 1, w, total + loss * lossw[:, s], m, v, t

        out = tf.while_loop(lambda s, *_: s < steps, body, state0, parallel_iterations=1)
        return list(out[1]), out[2]

    def _step(self, w, w0, corr, m, v, t, xb, yb, mb, act):
        """One SGD (or Adam) step of every client: xb [C*B, ...], mb [C, B] real rows, act [C] 1 while
        the client still trains."""
        b, lr = self.batch, tf.constant(self.lr, tf.float32)
        c = tf.shape(act)[0]
        w = list(w)
        with tf.GradientTape() as tape:
            tape.watch(w)
            probs = self.forward(w, xb)
            ce = tf.reshape(keras.losses.sparse_categorical_crossentropy(yb, probs), [c, b])
            # the mean over a client's real rows: a partial batch's mean, as sequentially
            loss = tf.reduce_sum(ce * mb, 1) / tf.maximum(tf.reduce_sum(mb, 1), 1.0)
            obj = tf.reduce_sum(loss)  # clients are independent: d obj / d w_c = d loss_c / d w_c
            if self.prox:
                obj = obj + self.mu / 2.0 * tf.add_n(
                    [tf.reduce_sum(tf.square(wj - aj)) for wj, aj in zip(w, w0)])
        grads = tape.gradient(obj, w)
        m, v = list(m), list(v)
        t = t + act if self.adam else t
        for j, g in enumerate(grads):
            if self.scaffold:
                g = g + corr[j]
            a = tf.reshape(act, [-1] + [1] * (len(self.shapes[j])))  # 0: this client is done
            if self.adam:
                on = tf.broadcast_to(a > 0, tf.shape(g))  # a done client keeps its moments
                m[j] = tf.where(on, 0.9 * m[j] + 0.1 * g, m[j])
                v[j] = tf.where(on, 0.999 * v[j] + 0.001 * tf.square(g), v[j])
                tt = tf.reshape(tf.maximum(t, 1.0), tf.shape(a))
                mhat = m[j] / (1.0 - tf.pow(0.9, tt))
                vhat = v[j] / (1.0 - tf.pow(0.999, tt))
                w[j] = w[j] - a * (lr * mhat / (tf.sqrt(vhat) + 1e-7))
            else:  # lr x 0/1 first: one pass over g fewer than a * (lr * g), and the same floats
                w[j] = w[j] - (lr * a) * g
        return tuple(w), loss, tuple(m), tuple(v), t

    # -- python API ---------------------------------------------------------------------------
    def steps(self, n: int) -> int:
        return self.epochs * ((n + self.batch - 1) // self.batch)

    def _schedule(self, jobs: list[Job]):
        """Per client and step: the pool rows of its batch (padded), the real-row mask, whether it
        still trains, and the weight of its loss (batch size in the last epoch, else 0)."""
        b, per = self.batch, [(j.n + self.batch - 1) // self.batch for j in jobs]
        steps = self.epochs * max(per)
        if self.xla:  # a few step counts only: each is an XLA compile
            steps = _bucket(steps)
        idx = np.zeros((len(jobs), steps, b), np.int32)
        mask = np.zeros((len(jobs), steps, b), np.float32)
        active = np.zeros((len(jobs), steps), np.float32)
        lossw = np.zeros((len(jobs), steps), np.float32)
        for c, job in enumerate(jobs):
            for e in range(self.epochs):
                perm = job.rng.permutation(job.n).astype(np.int32)
                perm = perm + np.int32(job.offset) if job.rows is None else job.rows[perm]
                s0 = e * per[c]
                for i in range(per[c]):
                    part = perm[i * b:(i + 1) * b]
                    idx[c, s0 + i, :len(part)] = part
                    mask[c, s0 + i, :len(part)] = 1.0
                    if e == self.epochs - 1:
                        lossw[c, s0 + i] = len(part)
                active[c, s0:s0 + per[c]] = 1.0
        return idx, mask, active, lossw

    def _stack(self, flats: list[np.ndarray]) -> list:
        """Flat wire-order vectors of C clients -> one [C, *shape] tensor per trainable variable."""
        arr = np.stack(flats)
        off = self.layout.offsets
        return [tf.constant(arr[:, off[i]:off[i + 1]].reshape(len(flats), *s))
                for i, s in zip(self.order, self.shapes)]

    def train(self, x, y, jobs: list[Job], xla: bool = True) -> list[Result]:
        """Train `jobs` on the pool (x, y: every client's rows, tensors or arrays); one Result
        each, in order. The rngs are drawn from here, one permutation per epoch each. xla=False:
        the plain graph, and no compile for these shapes."""
        out: list[Result] = []
        x, y = tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(y, tf.int32)
        for s in range(0, len(jobs), self.chunk):
            part = jobs[s:s + self.chunk]
            t0 = time.perf_counter()
            idx, mask, active, lossw = self._schedule(part)
            corr = self._stack([j.correction if j.correction is not None
                                else np.zeros(self.layout.size, np.float32) for j in part]) \
                if self.scaffold else []
            args = (x, y, idx, mask, active, lossw, self._stack([j.start for j in part]), corr)
            fn = self._pick((len(part), idx.shape[1], int(x.shape[0]))) if xla else self._fn
            w, total = fn(*args)
            w = [t.numpy() for t in w]
            total = total.numpy()
            wall = time.perf_counter() - t0
            share = active.sum(1) / max(float(active.sum()), 1.0)
            for c, job in enumerate(part):
                flat = job.start.copy()
                for i, t in zip(self.order, w):
                    flat[self.layout.offsets[i]:self.layout.offsets[i + 1]] = t[c].reshape(-1)
                out.append(Result(flat, float(total[c]) / job.n, wall * float(share[c])))
        return out

    def _pick(self, shape: tuple):
        """XLA from a shape's second call (unless its compile failed), else the plain graph."""
        if not self.xla or self.xla_error is not None:
            return self._fn
        seen = self.shapes_seen[shape] = self.shapes_seen.get(shape, 0) + 1
        if seen < 2:
            return self._fn

        def run(*args):
            try:
                return self._fn_xla(*args)
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:  # XLA refused
                self.xla_error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}"
                return self._fn(*args)
        return run

    def warmup(self, x, y) -> None:
        """Trace the compiled training once (on a copy of the start weights: nothing is kept)."""
        n = min(int(x.shape[0]), self.batch)
        start = self.layout.get()
        self.train(x[:n], y[:n], [Job(0, n, np.random.default_rng(0), start)], xla=False)


def _bucket(steps: int) -> int:
    """The smallest ceil(2^(k/4)) >= steps."""
    k = int(np.floor(4 * np.log2(max(steps, 1))))
    while int(np.ceil(2 ** (k / 4))) < steps:
        k += 1
    return int(np.ceil(2 ** (k / 4)))


def _use_xla(model: keras.Model, kind: str) -> bool:
    """XLA for the step: FEDTF_VECTORIZE_XLA=1/0, or with =auto where it was measured to help:
    the built-in layer forms, except convolutions on a CPU (XLA's grouped convolution on a CPU took
    ~100x longer than TensorFlow's own in bench/vectorised.py's CNN run). Off unless asked: a
    compile in a cold process took longer than a client's exit window, and a SCAFFOLD run's curve
    drifted from the plain graph's beyond the tests' tolerance (both seen once in a CI run)."""
    env = os.environ.get("FEDTF_VECTORIZE_XLA", "0")
    if env in ("0", "1"):
        return env == "1"
    if kind != "layers":
        return False
    convs = any(isinstance(layer, keras.layers.Conv2D)
                for layer in model._flatten_layers(include_self=False, recursive=True))  # noqa: SLF001
    return not convs or bool(tf.config.list_logical_devices("GPU"))


def _chunk(limit, model: keras.Model, batch: int, adam: bool) -> int:
    """Clients per call: the config's limit, or what FEDTF_VECTORIZE_MB holds (weights, start,
    gradient, correction and Adam's moments per client, plus the activations of a batch kept for
    the backward pass)."""
    if limit:
        return int(limit)
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    acts = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):  # noqa: SLF001
        try:
            acts += int(np.prod([d or 1 for d in layer.output.shape[1:]]))
        except (AttributeError, ValueError, TypeError):  # a layer without one output: estimate low
            continue
    per_client = 4 * (params * (6 + 2 * adam) + 3 * acts * batch)
    budget = float(os.environ.get("FEDTF_VECTORIZE_MB", 2048)) * 2**20
    return max(1, int(budget // max(per_client, 1)))


def make(model: keras.Model, input_shape: tuple, train_cfg: dict, strategy: str, mu: float,
         log) -> VectorTrainer | None:
    """The vectorised trainer that `train.vectorize` asks for: None for off, and for auto when
    the model cannot be vectorised (one log line says why); `on` raises Unsupported then."""
    mode = train_cfg.get("vectorize", "auto")
    if mode == "off":
        return None
    try:
        vt = VectorTrainer(model, input_shape, train_cfg, strategy, mu)
        x = np.zeros((1, *input_shape), np.float32)
        vt.warmup(x, np.zeros(1, np.int32))  # trace now: the generic path may refuse an op here
    except (Unsupported, ValueError, TypeError, NotImplementedError, tf.errors.OpError) as e:
        # a traced error's message starts with "in user code:" and the stack; its last line says why
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = (lines[-1] if lines else type(e).__name__)[:300]
        if not isinstance(e, Unsupported) and not why.startswith(type(e).__name__):
            why = f"{type(e).__name__}: {why}"
        if mode == "on":
            raise Unsupported(f"train.vectorize: on, but model {model.name} cannot be vectorised: {why}") from e
        log(f"training the clients one at a time: model {model.name} cannot be vectorised ({why})")
        return None
    how = "batched layers" if vt.forward.kind == "layers" else \
        f"stateless_call under vectorized_map (for {vt.forward.why_vmap})"
    log(f"vectorised training: up to {vt.chunk} clients per computation, {how}")
    return vt


_CACHE: dict = {}


def train_clients(model_name: str, weights: np.ndarray, shards: list, cfg: dict,
                  rngs: list | None = None) -> list[np.ndarray]:
    """Train each (x, y) of `shards` from the flat `weights` for cfg's local training; the new flat
    weights of each, in order. `cfg` is the payload config (keys model-independent: `train`,
    `seed`, and `strategy` {name, mu} optional); rngs default to default_rng([seed, k]).

    The trainer (model, compiled graph) is built once per (model, input shape, classes, train
    config) and reused: a benchmark calls this once per round."""
    train_cfg = dict(cfg["train"])
    st = cfg.get("strategy") or {}
    name, mu = st.get("name", "fedavg"), float(st.get("mu", 0.0))
    shape = tuple(np.asarray(shards[0][0]).shape[1:])
    classes = int(cfg.get("classes") or 1 + max(int(np.max(s[1])) for s in shards))
    key = (model_name, shape, classes, tuple(sorted(train_cfg.items())), name, mu)
    vt = _CACHE.get(key)
    if vt is None:
        from .models import build_model  # noqa: PLC0415
        training.seed_everything(int(cfg.get("seed", 0)))
        vt = _CACHE[key] = VectorTrainer(build_model(model_name, shape, classes), shape, train_cfg, name, mu)
    x = np.concatenate([np.asarray(s[0], np.float32) for s in shards])
    y = np.concatenate([np.asarray(s[1], np.int32).reshape(-1) for s in shards])
    seed = int(cfg.get("seed", 0))
    rngs = rngs or [np.random.default_rng([seed, k]) for k in range(len(shards))]
    offsets = np.concatenate([[0], np.cumsum([len(s[1]) for s in shards])])
    jobs = [Job(int(offsets[k]), len(s[1]), rngs[k], np.asarray(weights, np.float32))
            for k, s in enumerate(shards)]
    return [r.weights for r in vt.train(x, y, jobs)]
