"""``fedctl payloads``: the payloads fedctl can run, with their descriptions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedctl.cli.common import ConfigOpt, JsonOpt, env


def payloads_cmd(config: Optional[str] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """List the built-in payloads, those in ./payloads/, and the one the config names."""
    from rich.table import Table

    from fedctl.errors import FedctlError
    from fedctl.payload import load_manifest, payload_dirs, repo_payloads_dir, resolve_payload

    e = env()
    found = {name: (path, "built-in" if path.parent == repo_payloads_dir().resolve() else "./payloads")
             for name, path in payload_dirs().items()}
    cfg = Path(config) if config else Path("fedctl.yaml")
    if cfg.is_file():
        from fedctl.config.loader import load_yaml

        ref = load_yaml(cfg).get("payload")
        if isinstance(ref, str) and ref not in found:
            path = resolve_payload(ref, base_dir=cfg.parent.absolute())
            found[ref] = (path, f"named in {cfg}")
    rows = []
    for name, (path, origin) in sorted(found.items()):
        try:
            m = load_manifest(path)
            rows.append({"name": m.name, "origin": origin, "path": str(path), "description": m.description.strip()})
        except FedctlError as exc:  # a broken manifest is listed with its problem, not hidden
            rows.append({"name": name, "origin": origin, "path": str(path), "description": f"(invalid: {exc.message})"})
    if as_json:
        e.print_json(rows)
        return
    t = Table(title="payloads", title_justify="left")
    for col in ("name", "from", "description"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["name"], r["origin"], r["description"])
    e.console.print(t)


def register(app: typer.Typer) -> None:
    app.command("payloads")(payloads_cmd)
