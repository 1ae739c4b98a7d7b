"""playbooks/capture.yml on a POP whose capture fails after xdpdump wrote its file: the file holds
players' traffic, so it must sit where only root can go and must leave the POP whatever happens.

This host's kernel cannot run xdpdump (it has no BPF tracing programs; the capture itself is tested
on the VM lab, molecule check 14), so the POP's xdpdump here is a stand-in on PATH: it writes a
file that is no pcapng where it is told to - what a capture cut short leaves - notes the path, and
waits to be stopped, as xdpdump does. anycast.edge.xdp_capture then fails on that file. Before,
the playbook wrote it in /var/tmp under a name known from the controller's clock, and a failed
capture skipped the removal, so the file stayed on the POP.
"""

from __future__ import annotations

import os
import stat
import subprocess
import textwrap
from pathlib import Path

from helpers.playbook import VENV_BIN
from test_xdp_edge_role import inventory

REPO = Path(__file__).resolve().parents[2]

STAND_IN_XDPDUMP = textwrap.dedent("""\
    #!/bin/sh
    # xdpdump -i IFACE --rx-capture entry,exit -w FILE: write bytes that are no pcapng, note FILE, wait.
    while [ $# -gt 0 ]; do
        if [ "$1" = -w ]; then file=$2; fi
        shift
    done
    printf 'not a pcapng file at all' > "$file"
    echo "$file" >> "{log}"
    trap 'exit 0' INT
    while :; do sleep 0.1; done
    """)


def test_a_failed_capture_leaves_no_file_on_the_pop(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    written_log = tmp_path / "xdpdump-wrote"
    xdpdump = bin_dir / "xdpdump"
    xdpdump.write_text(STAND_IN_XDPDUMP.format(log=written_log))
    xdpdump.chmod(0o755)
    pop_dir = tmp_path / "pop" / "captures"
    controller_dir = tmp_path / "controller"
    inv = inventory(tmp_path, str(tmp_path / "bpffs"), deny=[])

    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
               PATH="%s:%s:%s" % (bin_dir, VENV_BIN, os.environ.get("PATH", "")))
    done = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inv), str(REPO / "playbooks" / "capture.yml"),
                           "-e", "anycast_edge_capture_duration=1", "-e", "anycast_edge_capture_pop_dir=%s" % pop_dir,
                           "-e", "anycast_edge_capture_dir=%s" % controller_dir],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    output = done.stdout + done.stderr

    # The capture ran and failed on what it wrote (the file was there when it failed) ...
    assert done.returncode != 0, output
    written = written_log.read_text().split()
    assert len(written) == 1, output
    capture_file = Path(written[0])
    assert "wrote %s, which is no readable pcapng" % capture_file in output, output
    # ... in the POP's root-only folder, not in a folder every local user can write to ...
    assert capture_file.parent == pop_dir
    folder = pop_dir.stat()
    assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == 0, oct(folder.st_mode)
    # ... and the file is gone all the same, by the playbook's own removal.
    assert not capture_file.exists(), output
    assert "TASK [Remove it from the POP]" in output, output
    assert os.listdir(pop_dir) == []


def test_a_shared_folder_is_refused_and_left_as_it_was(tmp_path):
    """anycast_edge_capture_pop_dir naming a folder that exists and is not the capture's own (here
    a sticky, world-writable one, as /tmp or /var/tmp): the play stops before the capture, naming
    the variable and the value, and the folder keeps its mode (the folder task would have made it
    0700, taking it from everybody else)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    inv = inventory(tmp_path, str(tmp_path / "bpffs"), deny=[])
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
               PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")))
    done = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inv), str(REPO / "playbooks" / "capture.yml"),
                           "-e", "anycast_edge_capture_duration=1", "-e", "anycast_edge_capture_pop_dir=%s" % shared,
                           "-e", "anycast_edge_capture_dir=%s" % (tmp_path / "controller")],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "anycast_edge_capture_pop_dir (%s) exists and is not a folder of root's with mode 0700" % shared in output, output
    assert "mode 1777" in output, output
    assert "TASK [Capture on each POP]" not in output, output
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
