"""The Typer CLI: one module per command (group), wired together in ``app``. Library calls only."""
