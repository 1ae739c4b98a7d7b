"""BPF_PROG_TEST_RUN benchmarks of the XDP edge program (run with `make bench`; see README.md)."""
