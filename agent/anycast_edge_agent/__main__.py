"""``python3 -m anycast_edge_agent``: the POP agent (see main.py)."""

import sys

from .main import main

sys.exit(main())
