"""YAML loading: missing files, syntax errors with line/column, duplicate keys, non-mapping tops."""

import pytest

from fedctl.config.loader import load_yaml
from fedctl.errors import ConfigError, ExitCode


def write(tmp_path, text, name="f.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_loads_a_mapping(tmp_path):
    assert load_yaml(write(tmp_path, "a: 1\nb: {c: [1, 2]}\n")) == {"a": 1, "b": {"c": [1, 2]}}


def test_empty_file_is_an_empty_mapping(tmp_path):
    assert load_yaml(write(tmp_path, "# only a comment\n")) == {}


def test_missing_file_names_the_file(tmp_path):
    p = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as e:
        load_yaml(p)
    assert str(p) in str(e.value) and "does not exist" in str(e.value)
    assert e.value.exit_code == ExitCode.USAGE


def test_syntax_error_reports_line_and_column(tmp_path):
    p = write(tmp_path, "a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError) as e:
        load_yaml(p)
    msg = str(e.value)
    assert str(p) in msg and "line " in msg and "column " in msg


def test_syntax_error_line_is_the_right_one(tmp_path):
    p = write(tmp_path, "a: 1\nb: 2\n  c: 3\n")
    with pytest.raises(ConfigError, match="line 3"):
        load_yaml(p)


def test_duplicate_keys_are_an_error(tmp_path):
    p = write(tmp_path, "a: 1\nb: 2\na: 3\n")
    with pytest.raises(ConfigError, match="duplicate key 'a'") as e:
        load_yaml(p)
    assert str(p) in str(e.value)


def test_nested_duplicate_keys_are_an_error(tmp_path):
    p = write(tmp_path, "hosts:\n  - name: x\n    address: a\n    name: y\n")
    with pytest.raises(ConfigError, match="duplicate key 'name'"):
        load_yaml(p)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match="top level must be a mapping") as e:
        load_yaml(p)
    assert e.value.file == str(p)


def test_unsafe_tags_are_refused(tmp_path):
    p = write(tmp_path, "a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError):
        load_yaml(p)
