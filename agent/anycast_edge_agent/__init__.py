"""anycast-edge-agent: the POP's user-space service.

It keeps the XDP program's A2S_INFO cache fresh (refresher), watches the backends and withdraws
the POP's BGP announcement when it cannot serve (health), and publishes the data plane's counters
to Prometheus (exporter). ``anycast-edge top`` (top.py) is the operators' terminal view.

The agent reads and writes the maps the ``xdp_program`` module pinned
(``<pin_root>/<iface>/maps/<map name>``) through the collection's own libbpf binding, so it
imports the collection's module_utils; the edge_agent role installs both side by side.
"""

__version__ = "0.1.0"
