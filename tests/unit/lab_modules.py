"""The VM lab's scripts (lab/*.py) and the validators' reference model, as modules for unit tests.

They are scripts, not a package: loaded by path, once, here, for every test that checks them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


game_server = load("lab_game_server", REPO / "lab" / "game_server.py")
player = load("lab_player", REPO / "lab" / "player.py")
spoof = load("lab_spoof", REPO / "lab" / "spoof.py")
game_model = load("game_model", REPO / "tests" / "bpf" / "game_model.py")
