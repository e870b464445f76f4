"""Test doubles for external systems that these machines do not run (a Kubernetes API server)."""
