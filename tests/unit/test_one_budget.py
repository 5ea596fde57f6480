"""One Budget type and one ON_FINISH in fedctl: defined once (fedctl/runtypes.py, below config and
state), validated once by the config layer, imported everywhere else."""

from __future__ import annotations

import ast
from pathlib import Path

FEDCTL = Path(__file__).resolve().parents[2] / "fedctl"


def _definitions(name: str) -> list[str]:
    """Every ``class <name>`` and every module-level assignment to ``<name>`` in fedctl's sources."""
    found = []
    for path in sorted(FEDCTL.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == name:
                found.append(f"{path.relative_to(FEDCTL)}:{node.lineno}")
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found.append(f"{path.relative_to(FEDCTL)}:{node.lineno}")
    return found


def test_only_one_class_named_budget_exists_in_fedctl():
    assert _definitions("Budget") == ["runtypes.py:" + str(_line("class Budget"))]


def test_only_one_on_finish_constant_exists_in_fedctl():
    assert _definitions("ON_FINISH") == ["runtypes.py:" + str(_line("ON_FINISH = "))]


def test_every_module_gets_the_same_budget():
    import fedctl.budget
    import fedctl.config
    import fedctl.config.experiment
    import fedctl.runtypes

    assert fedctl.budget.Budget is fedctl.runtypes.Budget is fedctl.config.experiment.Budget is fedctl.config.Budget
    assert fedctl.config.experiment.ON_FINISH is fedctl.runtypes.ON_FINISH


def _line(prefix: str) -> int:
    lines = (FEDCTL / "runtypes.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.startswith(prefix))
