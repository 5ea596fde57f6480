"""Payload manifests: validation, file hashing, placeholder rendering with quoting, lookup."""

import hashlib
import shlex
import textwrap
from pathlib import Path

import pytest

from fedctl.errors import ConfigError, PayloadError
from fedctl.payload import PLACEHOLDERS, load_manifest, resolve_payload

REPO = Path(__file__).resolve().parents[2]

MANIFEST = """
name: tiny
description: a test payload
files: ["*.py", "pkg/*.py"]
requirements:
  python: ">=3.10"
  imports: [json]
config:
  validator: "pkg/config.py:validate"
  keys: [alpha, nested]
server:
  command: "{python} {payload_dir}/server.py --config {config} --port {port}"
  ready_file: "{run_dir}/server.ready"
  results: ["{run_dir}/metrics.jsonl"]
  resume_flag: "--resume"
client:
  command: "{python} {payload_dir}/client.py --config {config} --server {server_address}:{port} --client-ids {client_ids}"
  log: "{run_dir}/client-{process}.log"
"""


def make_payload(root: Path, manifest: str = MANIFEST) -> Path:
    d = root / "tiny"
    (d / "pkg").mkdir(parents=True, exist_ok=True)
    (d / "payload.yaml").write_text(textwrap.dedent(manifest))
    (d / "server.py").write_text("print('server')\n")
    (d / "client.py").write_text("print('client')\n")
    (d / "pkg" / "config.py").write_text("def validate(d):\n    return dict(d)\n")
    (d / "notes.txt").write_text("not pushed\n")
    return d


def bad(tmp_path, manifest) -> ConfigError:
    d = make_payload(tmp_path, manifest)
    with pytest.raises(ConfigError) as e:
        load_manifest(d)
    assert e.value.file == str(d / "payload.yaml")
    return e.value


def test_load_good_manifest(tmp_path):
    m = load_manifest(make_payload(tmp_path))
    assert m.name == "tiny" and m.config_keys == ("alpha", "nested")
    assert m.imports == ("json",) and m.python_requirement == ">=3.10"
    assert m.server.resume_flag == "--resume" and m.server.log == "{run_dir}/server.log"
    assert m.dir.is_absolute()


def test_files_are_sorted_hashed_and_include_the_manifest(tmp_path):
    d = make_payload(tmp_path)
    (d / "pkg" / "__pycache__").mkdir()
    (d / "pkg" / "__pycache__" / "x.py").write_text("junk")
    (d / "server.py").chmod(0o755)
    files = load_manifest(d).files()
    assert [f.rel_path for f in files] == ["client.py", "payload.yaml", "pkg/config.py", "server.py"]
    by = {f.rel_path: f for f in files}
    assert by["server.py"].sha256 == hashlib.sha256(b"print('server')\n").hexdigest()
    assert by["server.py"].mode == 0o755
    assert by["client.py"].abs_path == d.resolve() / "client.py"


def test_hash_changes_with_content(tmp_path):
    d = make_payload(tmp_path)
    before = {f.rel_path: f.sha256 for f in load_manifest(d).files()}
    (d / "client.py").write_text("print('changed')\n")
    after = {f.rel_path: f.sha256 for f in load_manifest(d).files()}
    assert before["client.py"] != after["client.py"] and before["server.py"] == after["server.py"]


def test_glob_matching_nothing_is_an_error(tmp_path):
    d = make_payload(tmp_path, MANIFEST.replace('"pkg/*.py"', '"lib/*.py"'))
    with pytest.raises(ConfigError) as e:
        load_manifest(d).files()
    assert e.value.key_path == "files[1]" and "lib/*.py" in str(e.value)


def test_glob_may_not_leave_the_folder(tmp_path):
    e = bad(tmp_path, MANIFEST.replace('"pkg/*.py"', '"../*.py"'))
    assert e.key_path == "files[1]"


def test_unknown_top_key_lists_valid_keys(tmp_path):
    e = bad(tmp_path, MANIFEST + "entrypoint: x\n")
    assert e.key_path == "entrypoint"
    for k in ("name", "files", "requirements", "config", "server", "client"):
        assert k in e.valid


def test_unknown_server_key(tmp_path):
    e = bad(tmp_path, MANIFEST.replace("  resume_flag:", "  resum_flag:"))
    assert e.key_path == "server.resum_flag" and "resume_flag" in e.valid


def test_missing_server_command(tmp_path):
    e = bad(tmp_path, MANIFEST.replace('  command: "{python} {payload_dir}/server.py', '  cmd: "x'))
    assert e.key_path in ("server.cmd", "server.command")


def test_missing_server_command_when_only_command_is_absent(tmp_path):
    text = MANIFEST.replace('  command: "{python} {payload_dir}/server.py --config {config} --port {port}"\n', "")
    e = bad(tmp_path, text)
    assert e.key_path == "server.command" and "required" in e.problem


def test_unknown_placeholder_in_template(tmp_path):
    e = bad(tmp_path, MANIFEST.replace("--port {port}", "--port {prot}"))
    assert e.key_path == "server.command" and "{prot}" in e.problem
    assert "server_address" in e.valid


def test_unknown_placeholder_in_results(tmp_path):
    e = bad(tmp_path, MANIFEST.replace("{run_dir}/metrics.jsonl", "{rundir}/metrics.jsonl"))
    assert e.key_path == "server.results[0]"


def test_bad_validator_reference(tmp_path):
    e = bad(tmp_path, MANIFEST.replace("pkg/config.py:validate", "pkg/config.py"))
    assert e.key_path == "config.validator"


def values(**over):
    v = dict(python="/usr/bin/python3", payload_dir="/w/payloads/tiny", run_dir="/w/runs/r1", config="/w/runs/r1/config.yaml",
             token_file="/w/runs/r1/token", bind="0.0.0.0", port=0, server_address="10.0.0.1", client_ids=[0, 1, 2],
             process=0, workdir="/w", run_id="r1")
    v.update(over)
    return v


def test_render_substitutes_and_joins_ids(tmp_path):
    m = load_manifest(make_payload(tmp_path))
    cmd = m.render(m.client.command, **values())
    assert shlex.split(cmd) == [
        "/usr/bin/python3", "/w/payloads/tiny/client.py", "--config", "/w/runs/r1/config.yaml",
        "--server", "10.0.0.1:0", "--client-ids", "0,1,2",
    ]


def test_render_quotes_hostile_values_into_one_literal_arg(tmp_path):
    m = load_manifest(make_payload(tmp_path))
    evil = "/tmp/x; rm -rf / $(reboot) `id` 'q\""
    cmd = m.render(m.server.command, **values(config=evil))
    argv = shlex.split(cmd)
    assert argv[argv.index("--config") + 1] == evil
    assert len(argv) == 6  # nothing split off the hostile value


def test_render_path_is_unquoted(tmp_path):
    m = load_manifest(make_payload(tmp_path))
    assert m.render_path(m.client.log, **values(run_dir="/w/my runs", process=3)) == "/w/my runs/client-3.log"


def test_render_unknown_placeholder_is_an_error(tmp_path):
    m = load_manifest(make_payload(tmp_path))
    with pytest.raises(PayloadError, match="unknown placeholder"):
        m.render("{python} {evil}", **values())


def test_render_missing_value_is_an_error(tmp_path):
    m = load_manifest(make_payload(tmp_path))
    with pytest.raises(PayloadError, match="server_address"):
        m.render(m.client.command, **values(server_address=None))


def test_placeholders_match_the_contract():
    assert set(PLACEHOLDERS) == {"python", "payload_dir", "run_dir", "config", "token_file", "bind", "port",
                                 "server_address", "client_ids", "process", "workdir", "run_id"}


def test_load_validator(tmp_path):
    m = load_manifest(make_payload(tmp_path))
    fn = m.load_validator()
    assert fn({"alpha": 1}) == {"alpha": 1}


def test_validator_file_missing(tmp_path):
    d = make_payload(tmp_path)
    (d / "pkg" / "config.py").unlink()
    m = load_manifest(d)
    with pytest.raises(PayloadError, match="does not exist"):
        m.load_validator()


def test_resolve_by_path_and_name(tmp_path, monkeypatch):
    d = make_payload(tmp_path / "payloads")
    assert resolve_payload(str(d)) == d.resolve()
    assert resolve_payload("payloads/tiny", cwd=tmp_path) == d.resolve()
    assert resolve_payload("./tiny", base_dir=tmp_path / "payloads", cwd=tmp_path / "elsewhere") == d.resolve()
    assert resolve_payload("tiny", cwd=tmp_path) == d.resolve()  # ./payloads/<name>


def test_unknown_payload_lists_available(tmp_path):
    make_payload(tmp_path / "payloads")
    with pytest.raises(PayloadError) as e:
        resolve_payload("nope", cwd=tmp_path)
    assert "nope" in str(e.value) and "tiny" in str(e.value)


def test_repository_payloads_are_found(tmp_path):
    assert resolve_payload("echo", base_dir=None, cwd=REPO / "tests" / "payloads") == (REPO / "tests/payloads/echo").resolve()


def test_echo_payload_manifest_is_valid():
    m = load_manifest(REPO / "tests" / "payloads" / "echo")
    names = [f.rel_path for f in m.files()]
    assert {"server.py", "client.py", "payload.yaml", "echo_config.py"} <= set(names)
    assert m.load_validator()({}) == {"echo_round_s": 0.5, "echo_wait_s": 30.0, "fail_at_round": None,
                                      "echo_data": None}
