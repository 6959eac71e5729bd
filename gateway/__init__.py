"""The scoring gateway: request -> route -> score -> respond -> log (see README.md)."""

__version__ = "0.1.0"
