"""Experiment keys owned by the fedavg_tf payload: validation, defaults and the config-file loader.

Pure python on purpose: fedctl imports `validate` in its light CLI, so nothing here may import
TensorFlow or numpy at module import time.
"""
from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

from fedtf import async_config  # a sibling: fedctl loads this file alone, payload dir on the path

MODELS = ("mlp", "cnn", "logreg", "resnet18")
PRECISIONS = ("off", "auto", "on")  # train.mixed_precision (fedtf/models.py)
VECTORIZE = ("auto", "on", "off")  # train.vectorize (fedtf/vectorised.py)
DATASETS = ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "npz")
PARTITIONS = ("iid", "dirichlet", "shards")
STRATEGIES = ("fedavg", "fedprox", "scaffold", "fedavgm", "fedadam", "fedbuff", "fedasync")
OPTIMIZERS = ("sgd", "adam")

# Keys the payload never reads: owned by fedctl core (they may sit in the same config file).
FEDCTL_ONLY_KEYS = ("payload", "placement", "server", "budget", "on_finish", "name")
CORE_KEYS = ("clients", "rounds", "seed")

DEFAULTS: dict[str, Any] = {
    "model": "mlp",
    "data": {
        "dataset": "digits",
        "path": None,
        "partition": "iid",
        "alpha": 0.5,
        "shards_per_client": 2,
        "test_fraction": 0.2,
        "synthetic": {"train": 6000, "test": 1000, "features": 784, "classes": 10, "noise": 1.0},
    },
    "strategy": {"name": "fedavg", "mu": 0.01, "server_lr": None, "server_momentum": 0.9,
                 **async_config.DEFAULTS},
    "sampling": {"fraction": 1.0, "min_clients": 2, "round_timeout_s": 120.0, "retries": 2},
    "train": {"epochs": 1, "batch_size": 32, "lr": 0.05, "optimizer": "sgd",
              "mixed_precision": "off", "vectorize": "auto", "vectorize_chunk": None},
    "realism": {"latency_ms": 0.0, "bandwidth_mbps": 0.0, "dropout": 0.0,
                "slow_fraction": 0.0, "slow_factor": 1.0},
    # Defences against a client that holds the run token but misbehaves (see fedtf/robust.py and
    # the HTTP server in fedtf/coordinator.py).
    "robustness": {"max_update_norm": 1.0e6, "max_norm_ratio": 10.0, "read_timeout_s": 60.0,
                   "max_connections": None},
    "evaluate_every": 1,
    "test_subset": None,             # evaluate on this many test examples (a fixed sample), null: all
    "evaluate_in_background": True,  # evaluate round r's model while round r+1's clients train
    "tensorboard": False,
}
# server_lr default depends on the strategy: a server Adam with step 1.0 diverges.
SERVER_LR_DEFAULT = {"fedadam": 0.01, "fedasync": 0.6}
PAYLOAD_KEYS = tuple(DEFAULTS)


class ConfigProblem(ValueError):
    """One invalid experiment key: where it is, what is wrong, what would be valid."""

    def __init__(self, key_path: str, problem: str, valid: str | None = None) -> None:
        self.key_path = key_path
        self.problem = problem
        self.valid = valid
        msg = f"{key_path}: {problem}"
        if valid:
            msg += f" (valid: {valid})"
        super().__init__(msg)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _numeric_text(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        return math.isfinite(float(v))
    except ValueError:
        return False


def _int(v: Any, path: str, lo: int | None = None) -> int:
    if not _is_int(v):
        raise ConfigProblem(path, f"expected an integer, got {v!r}")
    if lo is not None and v < lo:
        raise ConfigProblem(path, f"must be >= {lo}, got {v}")
    return v


def _num(v: Any, path: str, lo: float | None = None, lo_open: bool = False,
         hi: float | None = None) -> float:
    if not _is_num(v):
        # PyYAML reads 1e6 (no dot, no exponent sign) as text, which surprises everyone
        hint = " (YAML reads this as text: write e.g. 1.0e+6 or 1000000)" if _numeric_text(v) else ""
        raise ConfigProblem(path, f"expected a number, got {v!r}{hint}")
    v = float(v)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ConfigProblem(path, f"must be {'>' if lo_open else '>='} {lo:g}, got {v:g}")
    if hi is not None and v > hi:
        raise ConfigProblem(path, f"must be <= {hi:g}, got {v:g}")
    return v


def _choice(v: Any, path: str, options: tuple[str, ...], what: str) -> str:
    if not isinstance(v, str) or v not in options:
        raise ConfigProblem(path, f"unknown {what} {v!r}", ", ".join(options))
    return v


def _section(d: Any, path: str, defaults: dict[str, Any]) -> dict[str, Any]:
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigProblem(path, f"expected a mapping, got {type(d).__name__}")
    unknown = sorted(str(k) for k in d if k not in defaults)
    if unknown:
        raise ConfigProblem(f"{path}.{unknown[0]}", "unknown key", ", ".join(defaults))
    out = copy.deepcopy(defaults)
    out.update(d)
    return out


def _bool(d: dict, key: str) -> bool:
    v = d.get(key, DEFAULTS[key])
    if not isinstance(v, bool):
        raise ConfigProblem(key, f"expected true or false, got {v!r}")
    return v


def _model(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigProblem("model", f"expected a string, got {v!r}", ", ".join(MODELS) + ", file.py:build_fn")
    if v in MODELS:
        return v
    if ":" in v:
        file, _, fn = v.rpartition(":")
        if file.endswith(".py") and fn.isidentifier():
            return v
    raise ConfigProblem("model", f"unknown model {v!r}", ", ".join(MODELS) + ", file.py:build_fn")


def validate(d: dict, core: dict | None = None, base_dir: str | None = None) -> dict:
    """Check the payload's keys, fill defaults, return the resolved dict.

    Receives only the keys listed in payload.yaml `config.keys`, and fedctl's `core` keys
    ({clients, rounds, seed}) for the checks that span both. `base_dir` is the folder a relative
    `data.path` is read from (fedctl passes the config file's; on a host the path is absolute).
    Every check the server and clients would make at start on the config alone is made here,
    including the data set's size against the clients, so fedctl reports it before touching a host.
    Raises ConfigProblem.
    """
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigProblem("(root)", f"expected a mapping, got {type(d).__name__}")
    unknown = sorted(str(k) for k in d if k not in DEFAULTS)
    if unknown:
        raise ConfigProblem(unknown[0], "unknown key", ", ".join(PAYLOAD_KEYS))
    out: dict[str, Any] = {"model": _model(d.get("model", DEFAULTS["model"]))}

    data = _section(d.get("data"), "data", DEFAULTS["data"])
    _choice(data["dataset"], "data.dataset", DATASETS, "dataset")
    if data["path"] is not None and not isinstance(data["path"], str):
        raise ConfigProblem("data.path", f"expected a file path or null, got {data['path']!r}")
    if data["dataset"] == "npz" and not data["path"]:
        raise ConfigProblem("data.path", "dataset npz needs a path to a .npz file "
                            "with x_train, y_train, x_test, y_test")
    _choice(data["partition"], "data.partition", PARTITIONS, "partition")
    data["alpha"] = _num(data["alpha"], "data.alpha", 0.0, lo_open=True)
    data["shards_per_client"] = _int(data["shards_per_client"], "data.shards_per_client", 1)
    data["test_fraction"] = _num(data["test_fraction"], "data.test_fraction", 0.0, True, 0.9)
    syn = _section(data["synthetic"], "data.synthetic", DEFAULTS["data"]["synthetic"])
    for k in ("train", "test", "features"):
        syn[k] = _int(syn[k], f"data.synthetic.{k}", 1)
    syn["classes"] = _int(syn["classes"], "data.synthetic.classes", 2)
    syn["noise"] = _num(syn["noise"], "data.synthetic.noise", 0.0)
    data["synthetic"] = syn
    out["data"] = data

    st = _section(d.get("strategy"), "strategy", DEFAULTS["strategy"])
    _choice(st["name"], "strategy.name", STRATEGIES, "strategy")
    st["mu"] = _num(st["mu"], "strategy.mu", 0.0)
    if st["server_lr"] is None:
        st["server_lr"] = SERVER_LR_DEFAULT.get(st["name"], 1.0)
    st["server_lr"] = _num(st["server_lr"], "strategy.server_lr", 0.0, lo_open=True)
    st["server_momentum"] = _num(st["server_momentum"], "strategy.server_momentum", 0.0, hi=0.999999)
    if st["server_momentum"] >= 1.0:
        raise ConfigProblem("strategy.server_momentum", "must be < 1")
    out["strategy"] = st
    sm = _section(d.get("sampling"), "sampling", DEFAULTS["sampling"])
    sm["fraction"] = _num(sm["fraction"], "sampling.fraction", 0.0, lo_open=True, hi=1.0)
    sm["min_clients"] = _int(sm["min_clients"], "sampling.min_clients", 1)
    sm["round_timeout_s"] = _num(sm["round_timeout_s"], "sampling.round_timeout_s", 0.0, lo_open=True)
    sm["retries"] = _int(sm["retries"], "sampling.retries", 0)
    out["sampling"] = sm
    tr = _section(d.get("train"), "train", DEFAULTS["train"])
    tr["epochs"] = _int(tr["epochs"], "train.epochs", 1)
    tr["batch_size"] = _int(tr["batch_size"], "train.batch_size", 1)
    tr["lr"] = _num(tr["lr"], "train.lr", 0.0, lo_open=True)
    _choice(tr["optimizer"], "train.optimizer", OPTIMIZERS, "optimizer")
    for key in ("mixed_precision", "vectorize"):
        if isinstance(tr[key], bool):  # YAML 1.1 reads a bare on/off as true/false
            tr[key] = "on" if tr[key] else "off"
    _choice(tr["mixed_precision"], "train.mixed_precision", PRECISIONS, "mode")
    _choice(tr["vectorize"], "train.vectorize", VECTORIZE, "mode")
    if tr["vectorize_chunk"] is not None:  # clients per vectorised computation; null: from memory
        tr["vectorize_chunk"] = _int(tr["vectorize_chunk"], "train.vectorize_chunk", 1)
    if st["name"] == "scaffold" and tr["optimizer"] != "sgd":  # option II's c_i assumes lr * gradient steps
        raise ConfigProblem("train.optimizer", f"strategy scaffold needs plain SGD steps, got {tr['optimizer']!r}",
                            "sgd with scaffold")
    out["train"] = tr
    re = _section(d.get("realism"), "realism", DEFAULTS["realism"])
    re["latency_ms"] = _num(re["latency_ms"], "realism.latency_ms", 0.0)
    re["bandwidth_mbps"] = _num(re["bandwidth_mbps"], "realism.bandwidth_mbps", 0.0)
    re["dropout"] = _num(re["dropout"], "realism.dropout", 0.0, hi=1.0)
    if re["dropout"] >= 1.0:
        raise ConfigProblem("realism.dropout", "must be < 1 (every client would vanish)")
    re["slow_fraction"] = _num(re["slow_fraction"], "realism.slow_fraction", 0.0, hi=1.0)
    re["slow_factor"] = _num(re["slow_factor"], "realism.slow_factor", 1.0)
    out["realism"] = re
    rob = _section(d.get("robustness"), "robustness", DEFAULTS["robustness"])
    rob["max_update_norm"] = _num(rob["max_update_norm"], "robustness.max_update_norm", 0.0, lo_open=True)
    if rob["max_norm_ratio"] is not None:
        # at most 1x the median would reject about half of the honest clients every round
        rob["max_norm_ratio"] = _num(rob["max_norm_ratio"], "robustness.max_norm_ratio", 1.0, lo_open=True)
    rob["read_timeout_s"] = _num(rob["read_timeout_s"], "robustness.read_timeout_s", 0.0, lo_open=True)
    if rob["max_connections"] is not None:
        # a client process needs one connection to poll and one to upload
        rob["max_connections"] = _int(rob["max_connections"], "robustness.max_connections", 2)
    out["robustness"] = rob
    out["evaluate_every"] = _int(d.get("evaluate_every", DEFAULTS["evaluate_every"]), "evaluate_every", 1)
    ts = d.get("test_subset", DEFAULTS["test_subset"])
    out["test_subset"] = None if ts is None else _int(ts, "test_subset", 1)
    out["evaluate_in_background"] = _bool(d, "evaluate_in_background")
    out["tensorboard"] = _bool(d, "tensorboard")
    user_sampling = d.get("sampling") if isinstance(d.get("sampling"), dict) else {}
    if core is not None and user_sampling.get("min_clients") is None:
        # the default (2) must not make a 1-client run impossible
        out["sampling"]["min_clients"] = min(out["sampling"]["min_clients"], int(core["clients"]))
    if core is not None and out["sampling"]["min_clients"] > int(core["clients"]):
        raise ConfigProblem("sampling.min_clients",
                            f"{out['sampling']['min_clients']} is more than the {core['clients']} clients",
                            "at most the number of clients")
    n = None if core is None else samples_per_round({**out, "clients": int(core["clients"])})
    async_config.check(st, None if core is None else int(core["clients"]), n, ConfigProblem, _num, _int)
    _check_data_fits(out, core, base_dir)
    return out


# --- what the data set holds, known without loading it -------------------------------------------
# The server and every client call data.load_dataset + data.partition at start; these mirror the
# checks there (and models.cnn's) from sizes that need neither TensorFlow nor numpy.

# Examples per class of sklearn's digits (np.bincount(load_digits().target)): the shipped file is
# fixed, so the size of the train split follows from test_fraction alone (see data._split).
DIGITS_CLASS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)
DIGITS_SHAPE = (8, 8, 1)
# keras.datasets train splits, used as shipped (no split of our own).
KERAS_TRAIN = {"mnist": (60000, (28, 28, 1)), "fashion_mnist": (60000, (28, 28, 1)),
               "cifar10": (50000, (32, 32, 3))}


def _digits_train_size(test_fraction: float) -> int:
    # the same arithmetic as data._split: per class, max(1, round(n * test_fraction)) go to test
    return sum(n - max(1, int(round(n * test_fraction))) for n in DIGITS_CLASS_COUNTS)


def _npz_shapes(path: str, cifar: bool) -> dict[str, tuple] | None:
    """Shapes of an .npz's arrays from their headers (fedtf/npzfile.py); None when the file is not
    here (the hosts check it at start) or np.load must judge it. cifar: the arrays must be CIFAR's."""
    from fedtf import npzfile  # noqa: PLC0415 - only for npz data

    if not os.path.isfile(path):
        return None
    try:
        infos = npzfile.read_infos(path)
        if infos is not None and cifar:
            npzfile.check_cifar(path, infos)
    except npzfile.NpzProblem as e:
        raise ConfigProblem("data.path", str(e)) from None
    except OSError:
        return None
    return None if infos is None else {k: v.shape for k, v in infos.items()}


def _data_size(data: dict, base_dir: str | None) -> tuple[int, tuple] | None:
    """(training examples, shape of one example as the model sees it), or None when unknown here."""
    name = data["dataset"]
    if name == "digits":
        return _digits_train_size(data["test_fraction"]), DIGITS_SHAPE
    if name == "synthetic":
        return data["synthetic"]["train"], (data["synthetic"]["features"],)
    if name in KERAS_TRAIN and not (name == "cifar10" and data["path"]):
        return KERAS_TRAIN[name]
    if name in ("npz", "cifar10") and data["path"]:
        path = os.path.expanduser(data["path"])
        if not os.path.isabs(path) and base_dir is not None:
            path = os.path.join(base_dir, path)
        shapes = _npz_shapes(path, name == "cifar10")
        if shapes is None:
            return None
        n = math.prod(shapes["y_train"])  # data.load_dataset flattens the labels
        example = shapes["x_train"][1:]
        if len(example) == 2:  # grey images get a channel axis (data._images)
            example = (*example, 1)
        return n, example
    return None


def _check_data_fits(out: dict, core: dict | None, base_dir: str | None) -> None:
    """The start-time checks of data.partition, data._shards and models.cnn, made up front."""
    known = _data_size(out["data"], base_dir)
    if known is None:
        return
    n, example = known
    if out["model"] == "cnn" and len(example) == 1 and math.isqrt(example[0]) ** 2 != example[0]:
        raise ConfigProblem("model", f"cnn needs image data, got {example[0]} flat features",
                            "mlp, logreg, or data whose features make a square image")
    if out["model"] == "resnet18" and len(example) != 3:
        raise ConfigProblem("model", f"resnet18 needs image data (height, width, channels), got examples "
                            f"of shape {example}", "mlp, cnn, logreg, or image data such as cifar10")
    if core is None:
        return
    clients = int(core["clients"])
    if n < clients:
        raise ConfigProblem("clients", f"{clients} clients but only {n} training examples "
                            f"in {out['data']['dataset']}", f"at most {n} clients")
    per_client = out["data"]["shards_per_client"]
    if out["data"]["partition"] == "shards" and clients * per_client > n:
        raise ConfigProblem("data.shards_per_client",
                            f"{clients}x{per_client} shards need at least {clients * per_client} "
                            f"training examples, there are {n}",
                            f"at most {n // clients} for {clients} clients")


def resolve(full: dict) -> dict:
    """Validate a whole experiment config (core + payload + fedctl-only keys) for the payload.

    Returns the payload keys resolved plus `clients`, `rounds`, `seed`.
    """
    if not isinstance(full, dict):
        raise ConfigProblem("(root)", "the config file must hold a mapping")
    if "clients" not in full:
        raise ConfigProblem("clients", "missing (number of federated clients)")
    clients = _int(full["clients"], "clients", 1)
    rounds = _int(full.get("rounds", 20), "rounds", 1)
    seed = _int(full.get("seed", 42), "seed", 0)
    payload = {k: v for k, v in full.items() if k not in FEDCTL_ONLY_KEYS and k not in CORE_KEYS}
    out = validate(payload, core={"clients": clients, "rounds": rounds, "seed": seed})
    out.update(clients=clients, rounds=rounds, seed=seed)
    return out


def load(path: str | os.PathLike) -> dict:
    """Read the experiment config file (YAML; JSON also accepted) and resolve it."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        import yaml  # noqa: PLC0415 - optional on hosts; JSON is valid YAML for the fallback
    except ImportError:
        yaml = None
    try:
        full = yaml.safe_load(text) if yaml is not None else json.loads(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError: report, don't guess
        raise ConfigProblem("(file)", f"{path} is not valid YAML: {e}") from e
    return resolve(full or {})


def samples_per_round(cfg: dict) -> int:
    """How many clients the server samples each round: max(round(C*K), min_clients), at most K."""
    k = cfg["clients"]
    m = max(1, int(round(cfg["sampling"]["fraction"] * k)))
    return min(k, max(m, cfg["sampling"]["min_clients"]))
