"""One home for each default (issue 16): a variable's default is set in one role's defaults only;
those several roles read live in roles/anycast_edge_defaults, which each of those roles depends on.
"""

from __future__ import annotations

import collections
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARED_HOME = "anycast_edge_defaults"


def role_defaults():
    """role name -> {variable: default} of every role's defaults/main.yml."""
    return dict((path.parents[1].name, yaml.safe_load(path.read_text()) or {})
                for path in sorted(ROOT.glob("roles/*/defaults/main.yml")))


def dependencies(role):
    meta = yaml.safe_load((ROOT / "roles" / role / "meta" / "main.yml").read_text()) or {}
    return [entry["role"] if isinstance(entry, dict) else entry for entry in meta.get("dependencies") or []]


def test_every_default_has_one_home():
    homes = collections.defaultdict(list)
    for role, defaults in role_defaults().items():
        for variable in defaults:
            homes[variable].append(role)
    assert dict((variable, roles) for variable, roles in homes.items() if len(roles) > 1) == {}


def test_roles_that_read_a_shared_default_depend_on_its_home():
    shared = set(role_defaults()[SHARED_HOME])
    assert "anycast_edge_bpf_pin_root" in shared
    for role_dir in sorted((ROOT / "roles").iterdir()):
        if role_dir.name == SHARED_HOME:
            continue
        text = "\n".join(path.read_text() for path in sorted(role_dir.rglob("*")) if path.is_file()
                         and path.suffix in (".yml", ".j2") and path.parent.name != "meta")
        read = sorted(variable for variable in shared if variable in text)
        if read:
            assert "anycast.edge." + SHARED_HOME in dependencies(role_dir.name), (role_dir.name, read)


def test_the_shared_defaults_are_documented_with_the_same_values():
    specs = yaml.safe_load((ROOT / "roles" / SHARED_HOME / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert dict((name, option["default"]) for name, option in options.items()) == role_defaults()[SHARED_HOME]
