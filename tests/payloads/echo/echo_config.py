"""Validator of the echo payload's config keys (pure python; fedctl imports it locally).

Keys: echo_round_s (float >= 0, default 0.5): seconds per fake round; echo_wait_s (float >= 0,
default 30): how long the server waits for all clients to say hello before round 1 (then it goes on
anyway); fail_at_round (int >= 1 or null): the server exits 1 at that round (for failure tests);
echo_data (a file path or null): a file fedctl ships to the hosts with the run (for shipping tests).
"""

from __future__ import annotations

KEYS = ("echo_round_s", "echo_wait_s", "fail_at_round", "echo_data")
DEFAULTS = {"echo_round_s": 0.5, "echo_wait_s": 30.0, "fail_at_round": None, "echo_data": None}


class ConfigValueError(ValueError):
    def __init__(self, key_path: str, problem: str, valid: str | None = None) -> None:
        self.key_path = key_path
        self.problem = problem
        self.valid = valid
        super().__init__(f"{key_path}: {problem}" + (f" (valid: {valid})" if valid else ""))


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigValueError(key, f"must be a number >= 0, got {value!r}")
    return float(value)


def validate(data: dict) -> dict:
    """Return the echo keys resolved with defaults; raise ConfigValueError on a bad value."""
    for key in data:
        if key not in KEYS:
            raise ConfigValueError(key, "unknown key", ", ".join(KEYS))
    out = {**DEFAULTS, **data}
    out["echo_round_s"] = _number("echo_round_s", out["echo_round_s"])
    out["echo_wait_s"] = _number("echo_wait_s", out["echo_wait_s"])
    far = out["fail_at_round"]
    if far is not None and (isinstance(far, bool) or not isinstance(far, int) or far < 1):
        raise ConfigValueError("fail_at_round", f"must be an integer >= 1 or null, got {far!r}")
    data_file = out["echo_data"]
    if data_file is not None and not isinstance(data_file, str):
        raise ConfigValueError("echo_data", f"must be a file path or null, got {type(data_file).__name__}")
    return out
