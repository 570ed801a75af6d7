"""Benchmark: the operator against the seed's own Ansible play (`python -m bench.run`)."""
