"""The asynchronous strategies' keys (fedbuff, fedasync): validation and defaults.

Pure python (imported by fedctl's light CLI through config.py). The keys are validated whatever
the strategy, so one config file can run sync and async side by side (`--set strategy.name=...`);
the sync strategies do not read them.
"""
from __future__ import annotations

import math
from typing import Any, Callable

ASYNC_STRATEGIES = ("fedbuff", "fedasync")
STALENESS = ("constant", "polynomial", "hinge")
SERVER_OPTIMIZERS = ("sgd", "momentum", "adam")
LOCAL_OBJECTIVES = ("plain", "fedprox", "scaffold")

DEFAULTS: dict[str, Any] = {
    "concurrency": None,        # clients training at once; None: the sync sample size
    "buffer_size": None,        # K (fedbuff); None: max(1, concurrency // 2)
    "server_optimizer": "sgd",  # fedbuff's server step on the buffered delta
    "staleness": "polynomial",  # weight w(s) of an update s server versions old
    "staleness_exponent": 0.5,  # polynomial: (1 + s) ** -a
    "hinge_a": 10.0,            # hinge: 1 if s <= b else 1 / (a (s - b) + 1)
    "hinge_b": 4,
    "max_staleness": None,      # older updates are dropped; None: 2 * ceil(concurrency / K) + 4
    "local": "plain",           # the clients' objective: plain or fedprox (strategy.mu)
}


def is_async(name: str) -> bool:
    """Whether `name` is an asynchronous strategy."""
    return name in ASYNC_STRATEGIES


def check(st: dict, clients: int | None, sample_size: int | None, problem: type,
          num: Callable, integer: Callable) -> None:
    """Validate and resolve the async keys of the strategy section `st` in place.

    `problem` is config.ConfigProblem, `num`/`integer` its number checks; `clients` and
    `sample_size` (what the sync server would sample per round) are None when the core keys are
    not known, and the defaults that depend on them stay None.
    """
    if st["concurrency"] is not None:
        st["concurrency"] = integer(st["concurrency"], "strategy.concurrency", 1)
        if clients is not None and st["concurrency"] > clients:
            raise problem("strategy.concurrency", f"{st['concurrency']} is more than the {clients} clients",
                          "at most the number of clients")
    elif sample_size is not None:
        st["concurrency"] = sample_size
    if st["buffer_size"] is not None:
        st["buffer_size"] = integer(st["buffer_size"], "strategy.buffer_size", 1)
    elif st["concurrency"] is not None:
        st["buffer_size"] = max(1, st["concurrency"] // 2)
    for key, options in (("server_optimizer", SERVER_OPTIMIZERS), ("staleness", STALENESS),
                         ("local", LOCAL_OBJECTIVES)):
        if not isinstance(st[key], str) or st[key] not in options:
            raise problem(f"strategy.{key}", f"unknown value {st[key]!r}", ", ".join(options))
    st["staleness_exponent"] = num(st["staleness_exponent"], "strategy.staleness_exponent", 0.0)
    st["hinge_a"] = num(st["hinge_a"], "strategy.hinge_a", 0.0)
    st["hinge_b"] = integer(st["hinge_b"], "strategy.hinge_b", 0)
    if st["max_staleness"] is not None:
        st["max_staleness"] = integer(st["max_staleness"], "strategy.max_staleness", 0)
    elif st["concurrency"] is not None:
        k = 1 if st["name"] == "fedasync" else st["buffer_size"]
        st["max_staleness"] = 2 * math.ceil(st["concurrency"] / k) + 4
    if not is_async(st["name"]):
        return
    if st["local"] == "scaffold":
        raise problem("strategy.local", "SCAFFOLD is synchronous only: its control variates are "
                      "settled per round (c moves by |S|/N of the round's mean dc), which has no "
                      "meaning when updates from different model versions arrive one by one",
                      "plain or fedprox with fedbuff/fedasync")
    if st["name"] == "fedasync" and st["server_lr"] > 1.0:
        raise problem("strategy.server_lr", f"fedasync mixes the model with weight server_lr * w(s), "
                      f"which must be at most 1, got {st['server_lr']:g}", "a number in (0, 1]")
