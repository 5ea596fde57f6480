"""``fedctl init [DIR]``: write a commented fedctl.yaml and inventory.yaml to edit."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedctl.cli.common import env

TEMPLATES = ("fedctl.yaml", "inventory.yaml")


def templates_dir() -> Path:
    """``fedctl/templates/``: package data, so a wheel installed anywhere has them."""
    return Path(__file__).resolve().parents[1] / "templates"


def init_cmd(
    directory: Optional[Path] = typer.Argument(None, help="where to write the files (default: here)"),
    force: bool = typer.Option(False, "--force", help="overwrite existing files"),
) -> None:
    """Write a working, commented fedctl.yaml and inventory.yaml to start from."""
    from fedctl.errors import UsageError

    target = (directory or Path.cwd()).expanduser()
    src = templates_dir()
    existing = [n for n in TEMPLATES if (target / n).exists()]
    if existing and not force:
        raise UsageError(
            f"{', '.join(str(target / n) for n in existing)} already exist(s); nothing was written",
            hint="pass --force to overwrite",
        )
    missing = [n for n in TEMPLATES if not (src / n).exists()]
    if missing:
        raise UsageError(f"templates missing from this installation: {', '.join(missing)} (looked in {src})")
    target.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATES:
        (target / name).write_text((src / name).read_text())
        env().console.print(f"wrote {target / name}")
    env().console.print(
        "next: edit both, then `fedctl run --clients 10 -i inventory.yaml` for your hosts, "
        "or `fedctl run --clients 10` (no -i) on this machine"
    )


def register(app: typer.Typer) -> None:
    app.command("init")(init_cmd)
