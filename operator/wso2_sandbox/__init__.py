"""The embedded sandbox: a local control plane, HAProxy LBs and SSH "VM" nodes.

Tests, the benchmark and `make demo` all build on these modules; none of it ships in the image.
"""
