"""Shared pieces of the integration tier: network namespaces, private bpf filesystems,
running real ansible-playbook against localhost, UDP traffic and packet capture."""
