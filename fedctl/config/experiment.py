"""``fedctl.yaml``: the experiment. Core keys are fedctl's; every other top-level key is the payload's.

Order of precedence: the file, then ``--set`` overrides (applied to the raw mapping, so they are
validated like the file), then the ``--clients`` / ``--rounds`` flags. Core keys are validated here;
payload keys must be listed in the manifest's ``config.keys`` and are resolved by the payload's own
validator (a pure-python function loaded from the payload folder).

Every number is bounded (``MAX_CLIENTS``, ``MAX_ROUNDS``, the seed's 32 bits), and the payload's
validator gets what it needs (core keys, the config's folder) to make its start-time checks here, at
load time: a mistake is reported before any host is touched, not by a process already started on one.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from fedctl.config.loader import (
    check_choice,
    check_int,
    check_keys,
    check_number,
    check_str,
    load_yaml,
    preview,
    require_mapping,
    safe_text,
)
from fedctl.config.overrides import Override, apply_overrides, parse_overrides, source_for
from fedctl.errors import ConfigError, PayloadError
from fedctl.payload import PayloadManifest, load_manifest, resolve_payload
# the typed run settings live below config (the state stores them); re-exported here
from fedctl.runtypes import CORE_KEYS, ON_FINISH, Budget, Placement, RunConfig, ServerSettings

DEFAULT_FILE = "fedctl.yaml"
DEFAULT_PAYLOAD = "fedavg_tf"
PLACEMENT_KEYS = ("clients_per_host", "processes_per_gpu", "server_device")
SERVER_DEVICES = ("auto", "cpu", "gpu")
SERVER_KEYS = ("port", "bind")
BUDGET_KEYS = ("max_cost", "max_hours", "idle_minutes")
#: Upper bounds on the run's size. 100,000 clients is past the largest cross-device FL benchmarks
#: simulated on a handful of hosts; 1,000,000 rounds at a second each is 11 days.
MAX_CLIENTS = 100_000
MAX_ROUNDS = 1_000_000
#: Seeds feed numpy's legacy ``np.random.seed`` (through keras), which takes 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1
#: Characters of a payload validator's message kept: it may quote a value at any length.
VALIDATOR_PROBLEM_CHARS = 240

# fullmatch, never match with ^...$ ("$" also matches before a trailing newline)
_VALIDATOR_MSG = re.compile(r"(?P<path>[A-Za-z0-9_.\[\]-]+): (?P<problem>.*?)(?: \(valid: (?P<valid>.*)\))?", re.S)


@dataclass(frozen=True)
class Experiment:
    """A validated experiment. ``path`` is None when no file was found (all defaults)."""

    path: str | None
    name: str | None
    payload_ref: str  # as written: a payload name or a path
    clients: int
    rounds: int
    seed: int
    placement: Placement
    server: ServerSettings
    budget: Budget
    on_finish: str | None
    payload: PayloadManifest
    payload_config: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # file + overrides + flags, before validation

    def run_config(self) -> RunConfig:
        """What the state stores of this experiment: the typed settings fedctl reads, the payload's
        keys as an opaque mapping."""
        return RunConfig(
            clients=self.clients, rounds=self.rounds, seed=self.seed, name=self.name,
            payload_name=self.payload.name, payload_dir=str(self.payload.dir),
            placement=self.placement, server=self.server, budget=self.budget, on_finish=self.on_finish,
            payload_config=copy.deepcopy(self.payload_config),
        )

    def resolved(self) -> dict[str, Any]:
        """The full resolved config (core + payload keys) written to hosts as ``config.yaml``."""
        return self.run_config().rendered()


def load_experiment(
    path: str | None,
    overrides: Sequence[str] = (),
    clients: int | None = None,
    rounds: int | None = None,
    cwd: str | Path | None = None,
) -> Experiment:
    """Load ``path`` (or ``./fedctl.yaml`` when None; missing => all defaults), apply ``--set``
    overrides and the ``--clients``/``--rounds`` flags, validate everything, resolve the payload."""
    cwd = Path(cwd or Path.cwd())
    if path is None:
        candidate = cwd / DEFAULT_FILE
        file: str | None = str(candidate) if candidate.exists() else None
        # messages say "fedctl.yaml" when it is the one in the current folder
        raw = load_yaml(candidate, name=_display(candidate)) if file else {}
    else:
        p = Path(path).expanduser()
        if not p.is_absolute():
            p = cwd / p
        file = str(path)
        raw = load_yaml(p, name=file)  # messages name the path as the user gave it
    base_dir = (cwd / Path(path).expanduser()).parent if path is not None else cwd

    ovs = parse_overrides(overrides)
    merged = apply_overrides(raw, ovs)
    flag_sources: dict[str, str] = {}
    if clients is not None:
        merged["clients"] = clients
        flag_sources["clients"] = "--clients"
    if rounds is not None:
        merged["rounds"] = rounds
        flag_sources["rounds"] = "--rounds"

    try:
        return _build(file, merged, ovs, base_dir, cwd)
    except ConfigError as exc:
        if exc.file not in (file, None) or exc.key_path is None:
            raise
        if file is not None and path is None:
            exc = ConfigError(_display(Path(file)), exc.key_path, exc.problem, exc.valid)
        top = re.split(r"[.\[]", exc.key_path)[0]
        source = flag_sources.get(top) if exc.key_path == top else None
        source = source or source_for(exc.key_path, ovs, exc.file)
        if source == exc.file:
            raise exc from None
        raise ConfigError(source, exc.key_path, exc.problem, exc.valid) from None


def _display(path: Path) -> str:
    """``path`` relative to the process's current folder when it is inside it, else as is."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _build(
    file: str | None, raw: dict[str, Any], ovs: list[Override], base_dir: Path, cwd: Path,
) -> Experiment:
    payload_ref = raw.get("payload", DEFAULT_PAYLOAD)
    payload_ref = check_str(file, ("payload",), payload_ref)
    try:
        payload_dir = resolve_payload(payload_ref, base_dir=base_dir, cwd=cwd)
    except PayloadError as exc:
        raise ConfigError(file, ("payload",), exc.message) from None
    manifest = load_manifest(payload_dir)

    valid_keys = list(CORE_KEYS) + [k for k in manifest.config_keys if k not in CORE_KEYS]
    check_keys(file, (), raw, valid_keys)

    name = raw.get("name")
    if name is not None:
        name = check_str(file, ("name",), name)
    n_clients = check_int(file, ("clients",), raw.get("clients", 10), minimum=1, maximum=MAX_CLIENTS)
    n_rounds = check_int(file, ("rounds",), raw.get("rounds", 20), minimum=1, maximum=MAX_ROUNDS)
    seed = check_int(file, ("seed",), raw.get("seed", 42), minimum=0, maximum=MAX_SEED)

    pl = require_mapping(file, ("placement",), raw.get("placement"))
    check_keys(file, ("placement",), pl, PLACEMENT_KEYS)
    cph = pl.get("clients_per_host", "auto")
    if cph != "auto":
        if isinstance(cph, str):
            raise ConfigError(file, ("placement", "clients_per_host"), f"{preview(cph)} is not valid",
                              ["auto", "an integer >= 1"])
        cph = check_int(file, ("placement", "clients_per_host"), cph, minimum=1, maximum=MAX_CLIENTS)
    ppg = check_int(file, ("placement", "processes_per_gpu"), pl.get("processes_per_gpu", 1), minimum=1, maximum=64)
    server_device = check_choice(file, ("placement", "server_device"), pl.get("server_device", "auto"),
                                 SERVER_DEVICES)

    sv = require_mapping(file, ("server",), raw.get("server"))
    check_keys(file, ("server",), sv, SERVER_KEYS)
    port = sv.get("port", "auto")
    if port != "auto":
        if isinstance(port, str):
            raise ConfigError(file, ("server", "port"), f"{preview(port)} is not valid",
                              ["auto", "an integer 1..65535"])
        port = check_int(file, ("server", "port"), port, 1, 65535)
    bind = check_str(file, ("server", "bind"), sv.get("bind", "0.0.0.0"))

    bd = require_mapping(file, ("budget",), raw.get("budget"))
    check_keys(file, ("budget",), bd, BUDGET_KEYS)
    budget_values = {
        k: None if bd.get(k) is None else check_number(file, ("budget", k), bd[k], 0.0, exclusive_min=True)
        for k in BUDGET_KEYS
    }

    on_finish = raw.get("on_finish")
    if on_finish is not None:
        on_finish = check_choice(file, ("on_finish",), on_finish, ON_FINISH)

    payload_raw = {k: copy.deepcopy(v) for k, v in raw.items() if k not in CORE_KEYS}
    rounds_given = "rounds" in raw  # the file, --set rounds= or --rounds
    payload_config = _validate_payload(
        file, manifest, payload_raw,
        {"clients": n_clients, "rounds": n_rounds, "seed": seed, "rounds_given": rounds_given}, base_dir,
    )
    # A payload whose program has its own round count (a Flower app's num-server-rounds) returns it
    # as "rounds": it is the run's count when the user gave none, so status and cost show what runs.
    own_rounds = payload_config.pop("rounds", None)
    if own_rounds is not None and not rounds_given:
        n_rounds = check_int(file, ("rounds",), own_rounds, minimum=1, maximum=MAX_ROUNDS)

    return Experiment(
        path=file,
        name=name,
        payload_ref=payload_ref,
        clients=n_clients,
        rounds=n_rounds,
        seed=seed,
        placement=Placement(cph, ppg, server_device),
        server=ServerSettings(port, bind),
        budget=Budget(**budget_values),
        on_finish=on_finish,
        payload=manifest,
        payload_config=payload_config,
        raw=copy.deepcopy(raw),
    )


def _validate_payload(
    file: str | None, manifest: PayloadManifest, data: dict[str, Any], core: dict[str, Any],
    base_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the payload's validator on its keys; wrap its ValueError into a ConfigError.

    A validator that takes a ``core`` argument also gets ``{clients, rounds, seed, rounds_given}``, for
    checks that span both (e.g. ``sampling.min_clients`` <= ``clients``); ``rounds_given`` is false when
    ``rounds`` is fedctl's default, and then a ``rounds`` key in the result replaces it. One that takes
    ``base_dir`` gets the folder relative file paths in the config are read from (the config file's),
    so it can look at the files it names (e.g. count a data file's examples) the way fedctl will ship them.
    The validator's message is escaped and cut short: it may quote the user's value verbatim.
    """
    import inspect

    validator = manifest.load_validator()
    if validator is None:
        return data
    try:
        params = inspect.signature(validator).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs: dict[str, Any] = {"core": dict(core)} if "core" in params else {}
    if "base_dir" in params and base_dir is not None:
        kwargs["base_dir"] = str(base_dir)
    try:
        result = validator(copy.deepcopy(data), **kwargs)
    except ValueError as exc:
        key_path = getattr(exc, "key_path", None)
        problem = getattr(exc, "problem", None)
        valid = getattr(exc, "valid", None)
        if problem is None:
            m = _VALIDATOR_MSG.fullmatch(str(exc))
            if m and key_path is None:
                key_path, problem, valid = m.group("path"), m.group("problem"), m.group("valid")
            else:
                problem = str(exc)
        if isinstance(key_path, (list, tuple)):
            key_path = tuple(safe_text(p, 40) if isinstance(p, str) else p for p in key_path)
        elif isinstance(key_path, str):
            key_path = safe_text(key_path, 120)
        valid = safe_text(valid, 300) if isinstance(valid, str) else valid
        raise ConfigError(file, key_path, safe_text(str(problem), VALIDATOR_PROBLEM_CHARS), valid) from None
    if not isinstance(result, dict):
        raise PayloadError(
            f"{manifest.path}: validator {manifest.validator!r} returned {type(result).__name__}, not a dict"
        )
    return result
