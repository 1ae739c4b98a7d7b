"""What the tests, the bench and the lab share, and none of them owns.

collection: the ``ansible_collections/anycast/edge`` tree that makes this checkout importable;
topology, namespace, edge_env: the little world xdp_edge.o runs in on crafted packets (BPF_PROG_TEST_RUN)
and the environment that loads it there. tests/ and bench/ both import from here; bench/ never
imports tests/. Nothing here is shipped to a host.
"""
