"""``HostInfo.python_env`` (how a host's Python is prepared) is not ``environment`` (variables);
a state file written before the rename, with the settings under ``env``, still loads."""

from __future__ import annotations

from fedctl.model import EnvSettings, HostInfo, host_from_dict, host_to_dict


def test_python_env_round_trips_and_an_older_env_key_loads():
    h = HostInfo("h1", "127.0.0.2", environment={"A": "1"},
                 python_env=EnvSettings(mode="venv", setup=("true",), keep=True))
    d = host_to_dict(h)
    assert "env" not in d and d["python_env"]["mode"] == "venv"
    assert host_from_dict(d) == h
    older = {k: v for k, v in d.items() if k != "python_env"} | {"env": d["python_env"]}
    assert host_from_dict(older) == h
