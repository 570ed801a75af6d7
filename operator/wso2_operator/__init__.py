"""WSO2Cluster operator: zero-downtime rolling updates of VM nodes behind HAProxy."""

__version__ = "0.1.0"
