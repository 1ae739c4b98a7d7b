"""Offline stand-in for the pip bootstrap script that ansible-test downloads.

ansible-test creates one virtualenv per sanity test (under ~/.ansible/test/venv/) without pip,
then bootstraps pip by running a ``get-pip`` script that it downloads from its own CI file host
and caches as ``~/.ansible/test/cache/get_pip_<version>.py``. That host is unreachable from our
machines (only PyPI is), so tools/sanity.sh puts this file at the cache path when nothing is
cached there yet, and ansible-test runs it instead.

It does what the bootstrap is asked to do, with what we can reach: pip from the interpreter's
own bundled wheel (``ensurepip``, no network), then the requested packages (``pip==<version>``)
from PyPI. ansible-test calls it as ``python quiet_pip.py <pip options> <packages>
[--no-setuptools] [--no-wheel]``; the last two are get-pip's own flags and are honoured here by
removing what ensurepip brought along.
"""

from __future__ import annotations

import subprocess
import sys

GET_PIP_ONLY_FLAGS = {"--no-setuptools", "--no-wheel"}


def main(argv: list[str]) -> int:
    pip_install_args = [arg for arg in argv if arg not in GET_PIP_ONLY_FLAGS]
    python = sys.executable

    subprocess.run([python, "-m", "ensurepip", "--default-pip"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([python, "-m", "pip", "install", "--quiet", *pip_install_args], check=True)

    unwanted = [name for flag, name in (("--no-setuptools", "setuptools"), ("--no-wheel", "wheel")) if flag in argv]
    if unwanted:
        # Uninstalling a package that is absent is a warning, not an error.
        subprocess.run([python, "-m", "pip", "uninstall", "--yes", "--quiet", *unwanted], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
