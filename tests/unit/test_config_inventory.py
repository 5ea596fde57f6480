"""inventory.yaml: every error names the file and the key path; ranges; defaults; local provider."""

import textwrap

import pytest

from fedctl.config.inventory import load_inventory
from fedctl.errors import ConfigError


def inv(tmp_path, text):
    p = tmp_path / "inventory.yaml"
    p.write_text(textwrap.dedent(text))
    return str(p)


def err(tmp_path, text) -> ConfigError:
    path = inv(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_inventory(path)
    assert e.value.file == path, "every inventory error names the file"
    assert path in str(e.value)
    return e.value


GOOD = """
provider: static
defaults:
  user: ubuntu
  port: 22
  workdir: ~/fl
  python: python3
  price_per_hour: 0.55
  currency: CNY
  host_key_policy: strict
hosts:
  - name: fl-server
    address: 203.0.113.10
    private_address: 192.168.1.10
    roles: [server]
    port: 2200
  - name: fl-client-{01..10}
    address: 192.168.1.{11..20}
    roles: [client]
"""


def test_no_inventory_is_local():
    i = load_inventory(None)
    assert i.provider == "local" and i.hosts == () and i.path is None


def test_good_inventory(tmp_path):
    i = load_inventory(inv(tmp_path, GOOD))
    assert i.provider == "static"
    assert len(i.hosts) == 11
    server = i.hosts[0]
    assert server.name == "fl-server" and server.port == 2200  # per-host override wins
    assert server.private_address == "192.168.1.10" and server.roles == ("server",)
    c1, c10 = i.hosts[1], i.hosts[10]
    assert (c1.name, c1.address) == ("fl-client-01", "192.168.1.11")
    assert (c10.name, c10.address) == ("fl-client-10", "192.168.1.20")
    assert c1.port == 22 and c1.user == "ubuntu" and c1.workdir == "~/fl"
    assert c1.price_per_hour == 0.55 and c1.currency == "CNY" and c1.host_key_policy == "strict"
    assert all(h.kind == "ssh" for h in i.hosts)
    assert i.host("fl-client-05").address == "192.168.1.15"


def test_inventory_is_frozen(tmp_path):
    i = load_inventory(inv(tmp_path, GOOD))
    with pytest.raises(AttributeError):
        i.provider = "local"  # type: ignore[misc]
    assert isinstance(i.hosts, tuple)


def test_defaults_when_unset(tmp_path):
    i = load_inventory(inv(tmp_path, "hosts:\n  - {name: a, address: 10.0.0.1}\n"))
    h = i.hosts[0]
    assert (h.user, h.port, h.workdir, h.python, h.host_key_policy) == (None, None, "~/fedctl", "python3", "accept-new")
    assert h.roles == ()


def test_unknown_top_key(tmp_path):
    e = err(tmp_path, "provider: static\nhostz: []\n")
    assert e.key_path == "hostz"
    assert "provider" in e.valid and "hosts" in e.valid and "defaults" in e.valid


def test_unknown_key_in_defaults(tmp_path):
    e = err(tmp_path, "defaults:\n  usr: x\nhosts:\n  - {name: a, address: b}\n")
    assert e.key_path == "defaults.usr"
    assert "user" in e.valid and "host_key_policy" in e.valid


def test_unknown_key_in_a_host(tmp_path):
    e = err(tmp_path, """
        hosts:
          - {name: a, address: 10.0.0.1}
          - {name: b, address: 10.0.0.2}
          - {name: c, adress: 10.0.0.3}
        """)
    assert e.key_path == "hosts[2].adress"
    assert "address" in e.valid and "private_address" in e.valid
    assert "hosts[2].adress" in str(e)


@pytest.mark.parametrize(
    "host,key,fragment",
    [
        ("{name: a, address: b, port: '22'}", "hosts[0].port", "integer"),
        ("{name: a, address: b, port: 70000}", "hosts[0].port", "<= 65535"),
        ("{name: a, address: b, port: 0}", "hosts[0].port", ">= 1"),
        ("{name: a, address: b, port: true}", "hosts[0].port", "integer"),
        ("{name: a, address: b, price_per_hour: -1}", "hosts[0].price_per_hour", ">= 0"),
        ("{name: a, address: b, price_per_hour: cheap}", "hosts[0].price_per_hour", "number"),
        ("{name: a, address: b, roles: [server, worker]}", "hosts[0].roles[1]", "not one of"),
        ("{name: a, address: b, roles: server}", "hosts[0].roles", "list"),
        ("{name: a, address: b, host_key_policy: yolo}", "hosts[0].host_key_policy", "not one of"),
        ("{name: a, address: b, currency: dollars}", "hosts[0].currency", "3-letter"),
        ("{name: a}", "hosts[0].address", "required"),
        ("{address: b}", "hosts[0].name", "required"),
        ("{name: 'a b', address: b}", "hosts[0].name", "letters"),
        ("{name: a, address: 5}", "hosts[0].address", "string"),
    ],
)
def test_wrong_types(tmp_path, host, key, fragment):
    e = err(tmp_path, f"hosts:\n  - {host}\n")
    assert e.key_path == key
    assert fragment in str(e)


def test_wrong_type_in_defaults(tmp_path):
    e = err(tmp_path, "defaults:\n  port: ssh\nhosts:\n  - {name: a, address: b}\n")
    assert e.key_path == "defaults.port"


def test_host_key_policy_lists_the_choices(tmp_path):
    e = err(tmp_path, "defaults:\n  host_key_policy: never\nhosts:\n  - {name: a, address: b}\n")
    assert e.valid == "accept-new, strict, off"


def test_password_key_is_rejected_pointing_to_password_env(tmp_path):
    e = err(tmp_path, "hosts:\n  - {name: a, address: b, password: hunter2}\n")
    assert e.key_path == "hosts[0].password"
    assert "password_env" in str(e)
    assert "hunter2" not in str(e)


def test_password_in_defaults_is_rejected(tmp_path):
    e = err(tmp_path, "defaults:\n  password: hunter2\nhosts:\n  - {name: a, address: b}\n")
    assert e.key_path == "defaults.password" and "hunter2" not in str(e)


def test_password_env_that_looks_like_a_password_is_not_echoed(tmp_path):
    e = err(tmp_path, "defaults:\n  password_env: 'S3cr3t!pw'\nhosts:\n  - {name: a, address: b}\n")
    assert e.key_path == "defaults.password_env"
    assert "S3cr3t!pw" not in str(e)
    assert "password" in e.problem


def test_password_env_name_is_accepted(tmp_path):
    i = load_inventory(inv(tmp_path, "defaults:\n  password_env: FEDCTL_PW\nhosts:\n  - {name: a, address: b}\n"))
    assert i.hosts[0].password_env == "FEDCTL_PW"


def test_bad_range(tmp_path):
    e = err(tmp_path, "hosts:\n  - {name: 'c{5..1}', address: '10.0.0.{5..1}'}\n")
    assert e.key_path == "hosts[0].name" and "backwards" in str(e)


def test_unbalanced_brace(tmp_path):
    e = err(tmp_path, "hosts:\n  - {name: 'c{1..3', address: '10.0.0.{1..3}'}\n")
    assert e.key_path == "hosts[0].name"


def test_range_lengths_must_match_and_both_are_named(tmp_path):
    e = err(tmp_path, "hosts:\n  - {name: 'c{1..3}', address: '10.0.0.{1..4}'}\n")
    assert e.key_path == "hosts[0].address"
    assert "c{1..3}" in str(e) and "10.0.0.{1..4}" in str(e)


def test_address_range_without_name_range(tmp_path):
    e = err(tmp_path, "hosts:\n  - {name: c, address: '10.0.0.{1..4}'}\n")
    assert e.key_path == "hosts[0].address" and "unique" in str(e)


def test_name_range_with_a_single_address(tmp_path):
    e = err(tmp_path, "hosts:\n  - {name: 'c{1..4}', address: 10.0.0.1}\n")
    assert e.key_path == "hosts[0].address"


def test_private_address_range_zips(tmp_path):
    i = load_inventory(inv(tmp_path, "hosts:\n  - {name: 'c{1..2}', address: 'pub{1..2}', private_address: '10.0.0.{7..8}'}\n"))
    assert [(h.name, h.address, h.private_address) for h in i.hosts] == [
        ("c1", "pub1", "10.0.0.7"), ("c2", "pub2", "10.0.0.8"),
    ]


def test_duplicate_names_after_expansion(tmp_path):
    e = err(tmp_path, """
        hosts:
          - {name: 'c{1..3}', address: '10.0.0.{1..3}'}
          - {name: c2, address: 10.0.0.9}
        """)
    assert e.key_path == "hosts[1].name"
    assert "duplicate host name 'c2'" in str(e) and "hosts[0]" in str(e)


def test_two_hosts_in_the_same_directory(tmp_path):
    e = err(tmp_path, "hosts:\n  - {name: a, address: h}\n  - {name: b, address: h}\n")
    assert e.key_path == "hosts[1].address" and "workdir" in str(e)


def test_same_address_with_other_workdirs_is_fine(tmp_path):
    i = load_inventory(inv(tmp_path, "hosts:\n  - {name: a, address: h, workdir: /a}\n  - {name: b, address: h, workdir: /b}\n"))
    assert [h.workdir for h in i.hosts] == ["/a", "/b"]


def test_unknown_provider(tmp_path):
    e = err(tmp_path, "provider: gcp\n")  # aws is a provider now
    assert e.key_path == "provider" and "static" in e.valid and "local" in e.valid and "aws" in e.valid


def test_static_without_hosts(tmp_path):
    e = err(tmp_path, "provider: static\n")
    assert e.key_path == "hosts"


def test_hosts_must_be_a_list(tmp_path):
    e = err(tmp_path, "hosts: {name: a}\n")
    assert e.key_path == "hosts"


def test_host_must_be_a_mapping(tmp_path):
    e = err(tmp_path, "hosts:\n  - just-a-name\n")
    assert e.key_path == "hosts[0]"


def test_local_provider_needs_no_hosts(tmp_path):
    i = load_inventory(inv(tmp_path, "provider: local\nhosts: []\n"))
    assert i.provider == "local" and i.hosts == ()


def test_local_provider_rejects_hosts(tmp_path):
    e = err(tmp_path, "provider: local\nhosts:\n  - {name: a, address: b}\n")
    assert e.key_path == "hosts"


def test_missing_inventory_file(tmp_path):
    p = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_inventory(p)
