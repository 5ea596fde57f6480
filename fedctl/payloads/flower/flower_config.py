"""Validator of the flower payload's config keys (pure python; fedctl imports it locally).

    app: ./my-flower-app          # a Flower app folder: pyproject.toml with [tool.flwr.app]
    flower:
      run_config: {lr: 0.1}       # --run-config overrides; num-server-rounds comes from `rounds`
      insecure: false             # true: plain HTTP between SuperNodes and SuperLink (no TLS)
      tls_names: []               # extra names/IPs for the SuperLink certificate
      connect_timeout_s: 60       # SuperNodes must all connect within this; a SuperNode gives up after it
      round_timeout_s: null       # informational; the app's strategy owns Flower's own timeouts

Rounds: fedctl's ``rounds`` becomes the app's ``num-server-rounds`` when the user gives it
(``--rounds``, ``--set rounds=``, ``rounds:`` in fedctl.yaml). Otherwise the app's own
``[tool.flwr.app.config] num-server-rounds`` is the run's count: the validator returns it as
``rounds`` and fedctl shows and budgets that (fedctl's default of 20 only for an app that has none,
or whose folder is not on this machine).

The SuperLink certificate names every address of the server host and the address each client says
it dials (its hello, see flower_common); ``tls_names`` adds names beyond those.
"""

from __future__ import annotations

import copy
import os
import re

KEYS = ("app", "flower")
FLOWER_KEYS = ("run_config", "insecure", "tls_names", "connect_timeout_s", "stop_timeout_s")
DEFAULTS = {
    "app": None,
    "flower": {"run_config": {}, "insecure": False, "tls_names": [], "connect_timeout_s": 60.0,
               "stop_timeout_s": 10.0},
}
_RUN_CONFIG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class ConfigValueError(ValueError):
    def __init__(self, key_path: str, problem: str, valid: str | None = None) -> None:
        self.key_path = key_path
        self.problem = problem
        self.valid = valid
        super().__init__(f"{key_path}: {problem}" + (f" (valid: {valid})" if valid else ""))


def _positive(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigValueError(key, f"must be a number > 0, got {value!r}")
    return float(value)


def _check_app(path: str, base_dir: str | None) -> tuple[str, object] | None:
    """When the app folder is here, check it is a Flower app (pyproject.toml with [tool.flwr.app]);
    return (its pyproject.toml, its ``num-server-rounds`` as written or None), else None."""
    full = os.path.expanduser(path)
    if not os.path.isabs(full):
        full = os.path.join(base_dir or os.getcwd(), full)
    if not os.path.exists(full):
        return None  # then it must exist on every host (fedctl says so when it ships files)
    if not os.path.isdir(full):
        raise ConfigValueError("app", f"{path!r} is a file; expected a Flower app folder (with pyproject.toml)")
    pyproject = os.path.join(full, "pyproject.toml")
    if not os.path.isfile(pyproject):
        raise ConfigValueError("app", f"{path!r} has no pyproject.toml: not a Flower app folder")
    try:
        import tomllib  # noqa: PLC0415 - Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]  # noqa: PLC0415
        except ImportError:
            return None
    try:
        with open(pyproject, "rb") as f:
            data = tomllib.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigValueError("app", f"{pyproject}: cannot read it as TOML: {exc}") from None
    app = ((data.get("tool") or {}).get("flwr") or {}).get("app")
    if not isinstance(app, dict):
        raise ConfigValueError("app", f"{pyproject} has no [tool.flwr.app] section: not a Flower app")
    comps = app.get("components") or {}
    missing = [c for c in ("serverapp", "clientapp") if c not in comps]
    if missing:
        raise ConfigValueError("app", f"{pyproject}: [tool.flwr.app.components] lacks {', '.join(missing)}")
    app_config = app.get("config")
    return pyproject, (app_config.get("num-server-rounds") if isinstance(app_config, dict) else None)


def _app_rounds(found: tuple[str, object] | None) -> int | None:
    """The app's own num-server-rounds (None when it names none): a whole number >= 1."""
    if found is None or found[1] is None:
        return None
    pyproject, value = found
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigValueError("app", f"{pyproject}: [tool.flwr.app.config] num-server-rounds must be a whole "
                               f"number >= 1, got {value!r} (or give fedctl's rounds: --rounds N)")
    return value


def validate(data: dict, core: dict | None = None, base_dir: str | None = None) -> dict:
    """Return the flower keys resolved with defaults; raise ConfigValueError on a bad value.

    When ``core`` says the user gave no ``rounds`` (``rounds_given`` false), the result also holds
    ``rounds``: the app's own ``num-server-rounds``, if it has one (fedctl makes it the run's count)."""
    data = data or {}
    for key in data:
        if key not in KEYS:
            raise ConfigValueError(str(key), "unknown key", ", ".join(KEYS))
    app = data.get("app")
    if not isinstance(app, str) or not app.strip():
        raise ConfigValueError("app", "is required with payload flower: the path of a Flower app folder "
                               "(e.g. --set app=./my-flower-app)")
    found = _check_app(app, base_dir)
    fl = data.get("flower")
    if fl is None:
        fl = {}
    if not isinstance(fl, dict):
        raise ConfigValueError("flower", f"must be a mapping, got {type(fl).__name__}", ", ".join(FLOWER_KEYS))
    for key in fl:
        if key not in FLOWER_KEYS:
            raise ConfigValueError(f"flower.{key}", "unknown key", ", ".join(FLOWER_KEYS))
    out = copy.deepcopy(DEFAULTS["flower"])
    out.update(copy.deepcopy(fl))
    rc = out["run_config"]
    if rc is None:
        rc = out["run_config"] = {}
    if not isinstance(rc, dict):
        raise ConfigValueError("flower.run_config", f"must be a mapping of run-config keys, got {type(rc).__name__}")
    for k, v in rc.items():
        if not isinstance(k, str) or not _RUN_CONFIG_KEY.match(k):
            raise ConfigValueError(f"flower.run_config.{k}", "is not a valid run-config key")
        if k == "num-server-rounds":
            raise ConfigValueError("flower.run_config.num-server-rounds", "comes from fedctl's `rounds`; set rounds instead")
        if v is None or not isinstance(v, (str, int, float, bool)):
            raise ConfigValueError(f"flower.run_config.{k}", f"must be a string, number or bool, got {v!r}")
    if not isinstance(out["insecure"], bool):
        raise ConfigValueError("flower.insecure", f"must be true or false, got {out['insecure']!r}")
    names = out["tls_names"] or []
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigValueError("flower.tls_names", f"must be a list of host names or IP addresses, got {names!r}")
    out["tls_names"] = names
    out["connect_timeout_s"] = _positive("flower.connect_timeout_s", out["connect_timeout_s"])
    out["stop_timeout_s"] = _positive("flower.stop_timeout_s", out["stop_timeout_s"])
    if core and int(core.get("clients") or 0) < 1:
        raise ConfigValueError("clients", "the flower payload needs at least 1 client (one SuperNode each)")
    resolved: dict = {"app": app, "flower": out}
    if core is not None and core.get("rounds_given") is False:  # not a core that predates the key
        own = _app_rounds(found)
        if own is not None:
            resolved["rounds"] = own
    return resolved
