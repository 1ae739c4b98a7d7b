"""A private bpf filesystem in a temporary folder: the tests' pin_root, never /sys/fs/bpf."""

from __future__ import annotations

import contextlib
from pathlib import Path

from .netns import run


@contextlib.contextmanager
def private_bpffs(folder: Path):
    """Mount a fresh bpffs at ``folder`` for the block, then unmount it.

    Mounted in the test's mount namespace before any ``ip netns exec`` starts: that command
    copies the mount table (as a slave), so modules run through it see the same pins.
    The unmount is lazy: pins still referenced by a dying namespace must not make it fail.
    """
    folder.mkdir(parents=True, exist_ok=True)
    run("mount", "-t", "bpf", "-o", "mode=700", "bpf", str(folder))
    try:
        yield folder
    finally:
        run("umount", "-l", str(folder), check=False)
