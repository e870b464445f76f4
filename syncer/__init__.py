"""dyups-syncer: keeps nginx dyups upstreams in step with service discovery."""

__version__ = "0.1.0"
