"""No secret in a results folder: values of secret-named keys, key material, known secret values.

Values of keys named like a secret are replaced (``password_env`` keeps only the variable's NAME),
PEM blocks are removed, and every known secret value (the run token, passwords from ``password_env``
variables) is masked in every text file of the folder, the collected logs included; token and key
files are deleted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from fedctl.fsutil import atomic_write
from fedctl.state import RunState

REMOVED = "<removed>"
KEY_MATERIAL_REMOVED = "<key material removed>"

_SECRET_KEY = re.compile(
    r"(^|[_\-.])(pass(word|wd|phrase)?|secret|token|api[_\-]?key|private[_\-]?key|credentials?|auth|key)($|[_\-.])",
    re.IGNORECASE,
)
#: keys whose value names a secret without being one (an env variable's name, a file's path)
_SAFE_SUFFIX = re.compile(r"(_env|_file|_path|_name)$", re.IGNORECASE)
_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(-----END [A-Z0-9 ]+-----|\Z)", re.DOTALL)
_KEY_MARKERS = ("-----BEGIN", "b3BlbnNzaC1rZXktdjE")  # PEM header; base64 of "openssh-key-v1"

_SAFE_KEYS = {"host_key_policy"}


def _secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key)) and not _SAFE_SUFFIX.search(key) and key.lower() not in _SAFE_KEYS


def scrub(data: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of ``data`` without secrets: values of secret-named keys, key material, known values."""
    secrets = [s for s in secrets if s]
    if isinstance(data, Mapping):
        out = {}
        for k, v in data.items():
            if not _secret_key(str(k)) or isinstance(v, (Mapping, list, tuple)):
                out[k] = scrub(v, secrets)  # a mapping under a secret-looking key: judge its keys
            else:
                out[k] = v if v in (None, "") else REMOVED
        return out
    if isinstance(data, (list, tuple)):
        return [scrub(v, secrets) for v in data]
    if isinstance(data, str):
        return redact_text(data, secrets)
    return data


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask known secret values and remove key material from a text."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    if any(m in text for m in _KEY_MARKERS):
        text = _PEM_BLOCK.sub(KEY_MATERIAL_REMOVED, text)
        text = re.sub(r"\S*b3BlbnNzaC1rZXktdjE\S*", KEY_MATERIAL_REMOVED, text)
        text = text.replace("-----BEGIN", KEY_MATERIAL_REMOVED)
    return text


def known_secrets(state: RunState, extra: Iterable[str] = ()) -> list[str]:
    """Secret values to mask: ``extra`` (the run token) and passwords from hosts' ``password_env``."""
    out = [s for s in extra if s]
    for h in state.hosts:
        name = h.info.password_env
        if name and os.environ.get(name):
            out.append(os.environ[name])
    # longest first, so a secret that contains another is masked whole; very short ones would mask
    # ordinary text and are not credible secrets
    return sorted({s for s in out if len(s) >= 4}, key=len, reverse=True)


_TEXT_SUFFIXES = {".log", ".txt", ".json", ".jsonl", ".yaml", ".yml", ".md", ".csv", ".out", ".err", ""}


def redact_tree(root: Path, secrets: Iterable[str] = ()) -> list[str]:
    """Scrub every text file under ``root`` in place; drop token files. Returns the files changed."""
    secrets = list(secrets)
    changed = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        if path.name in ("token", "token.txt") or path.suffix in (".pem", ".key"):
            path.unlink()
            changed.append(str(path.relative_to(root)))
            continue
        if path.suffix.lower() not in _TEXT_SUFFIXES and not path.name.endswith(".log.1"):
            continue
        raw = path.read_bytes()
        if b"\0" in raw[:4096]:
            continue  # binary
        text = raw.decode("utf-8", errors="replace")
        new = redact_text(text, secrets)
        if new != text:
            atomic_write(path, new.encode(), mode=0o644)
            changed.append(str(path.relative_to(root)))
    return changed
