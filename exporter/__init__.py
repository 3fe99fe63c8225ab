"""docker-netpolicy-exporter: Prometheus exporter for Docker container network policy drift."""

__version__ = "0.1.0"
