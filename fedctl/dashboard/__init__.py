"""The watch dashboard: pure renderers of a Snapshot and the Live loop."""
