"""pcapng_merge, run by the real ansible-playbook on the controller as playbooks/capture.yml runs
it: check mode writes nothing, the run writes the merged file, a rerun changes nothing, a file
that is not pcapng fails naming the files. The merge itself: tests/unit/test_pcapng.py; real
xdpdump files: the VM lab (molecule verify, check 14)."""

from __future__ import annotations

import sys
from pathlib import Path

from ansible_collections.anycast.edge.plugins.module_utils import _pcapng
from helpers.playbook import run_tasks, task

# One builder of a POP's capture file: tests/unit's.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_pcapng import capture  # noqa: E402  pylint: disable=wrong-import-position

MERGE = "anycast.edge.pcapng_merge"


def test_check_run_rerun_and_a_file_that_is_not_pcapng(tmp_path):
    pop1, pop2, dest = tmp_path / "pop1.pcapng", tmp_path / "pop2.pcapng", tmp_path / "fleet.pcapng"
    pop1.write_bytes(capture("<", b"pop1:eth1", [(0, 1_000, b"a"), (1, 1_500, b"a")]))
    pop2.write_bytes(capture("<", b"pop2:eth1", [(0, 1_200, b"b"), (1, 1_700, b"b")]))
    (tmp_path / "classic.pcap").write_bytes(b"\xd4\xc3\xb2\xa1" + b"\0" * 20)
    args = {"src": [str(pop1), str(pop2)], "dest": str(dest)}
    run = run_tasks([
        task(MERGE, args, check=True),
        task(MERGE, args),
        task(MERGE, args),
        task(MERGE, {"src": [str(pop1), str(tmp_path / "classic.pcap")], "dest": str(tmp_path / "bad.pcapng")}),
    ], tmp_path / "run")
    checked, merged, rerun, refused = run.results
    assert checked["changed"] and (checked["packets"], checked["interfaces"]) == (4, 4), checked
    assert merged["changed"] and (merged["packets"], merged["interfaces"]) == (4, 4), merged
    assert not rerun["changed"], rerun
    assert dest.read_bytes() == _pcapng.merge([pop1.read_bytes(), pop2.read_bytes()])
    assert oct(dest.stat().st_mode & 0o777) == "0o600"
    assert refused["failed"] and "classic.pcap" in refused["msg"] and "section header" in refused["msg"], refused
    assert not (tmp_path / "bad.pcapng").exists()
