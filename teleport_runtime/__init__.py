"""Certificate-based SSH access cluster runtime: auth (CA), proxy and node services."""

__version__ = "0.1.0"
