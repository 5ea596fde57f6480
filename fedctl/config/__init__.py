"""Configuration: ``inventory.yaml`` and ``fedctl.yaml`` -> validated, frozen objects.

    from fedctl.config import load_inventory, load_experiment
    inv = load_inventory("inventory.yaml")           # None -> local provider, no hosts
    exp = load_experiment(None, ["rounds=5"])        # ./fedctl.yaml or all defaults

Names are resolved lazily: ``fedctl.payload`` imports ``fedctl.config.loader``, and
``fedctl.config.experiment`` imports ``fedctl.payload``, so this package must not import its
submodules eagerly (it would make the import order matter).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Inventory": "fedctl.config.inventory",
    "load_inventory": "fedctl.config.inventory",
    "Experiment": "fedctl.config.experiment",
    "Placement": "fedctl.config.experiment",
    "ServerSettings": "fedctl.config.experiment",
    "Budget": "fedctl.config.experiment",
    "load_experiment": "fedctl.config.experiment",
    "Override": "fedctl.config.overrides",
    "parse_override": "fedctl.config.overrides",
    "load_yaml": "fedctl.config.loader",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from fedctl.config.experiment import Budget, Experiment, Placement, ServerSettings, load_experiment
    from fedctl.config.inventory import Inventory, load_inventory
    from fedctl.config.loader import load_yaml
    from fedctl.config.overrides import Override, parse_override


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedctl.config' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
