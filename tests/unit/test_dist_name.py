"""The PyPI name `fedctl` belongs to an unrelated project: fedctl is distributed as `fedctl-fl`
(the command and the import stay `fedctl`), and no install hint may name the other project."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import fedctl

REPO = Path(__file__).resolve().parents[2]
#: `pip install fedctl`, `pip install "fedctl[aws]"`, `pip install 'fedctl[tf]'` ...
WRONG_HINT = re.compile(r"""pip install\s+["']?fedctl(?![-_\w])""")


def test_the_distribution_is_named_as_the_hints_say():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == fedctl.DIST_NAME == "fedctl-fl"
    assert project["scripts"] == {"fedctl": "fedctl.cli.app:main"}


def test_no_install_hint_names_the_unrelated_project():
    files = [p for pattern in ("fedctl/**/*.py", "docs/*.md", "*.md", "inventories/*", "examples/**/*.md")
             for p in REPO.glob(pattern) if p.is_file()]
    offenders = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in files
                 for m in WRONG_HINT.finditer(p.read_text(errors="replace"))]
    assert offenders == []
    assert WRONG_HINT.search('pip install "fedctl[aws]"') and not WRONG_HINT.search('pip install "fedctl-fl[aws]"')
