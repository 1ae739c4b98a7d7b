"""The house rule of the shipped programs' maps: each says who writes it and who reads it, in the
comment right above its one-line declaration (bpf/include/map_def.h's DEFINE_MAP), so that a map
added without one is caught here rather than in review."""

from __future__ import annotations

import re

import pytest

MAP_HEADERS = ("bpf/include/edge_maps.h", "bpf/include/wireguard_maps.h", "bpf/include/mapper_abi.h")
DECLARATION = re.compile(r"DEFINE_MAP(?:_FLAGS)?\((\w+),")


@pytest.mark.parametrize("header", MAP_HEADERS)
def test_every_map_is_declared_in_one_line_under_its_comment(repo_root, header):
    lines = (repo_root / header).read_text().splitlines()
    declared, uncommented = [], []
    for number, line in enumerate(lines):
        found = DECLARATION.match(line)
        if found:
            declared.append(found.group(1))
            if number == 0 or not lines[number - 1].rstrip().endswith("*/"):
                uncommented.append(found.group(1))
    assert declared, header
    assert uncommented == [], "%s: maps without a who-writes/who-reads comment right above them" % header
    # Every map of the header is a DEFINE_MAP line, so the check above saw them all.
    assert not any('SEC(".maps")' in line for line in lines), header
