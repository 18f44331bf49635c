"""speko_sync: real-time voice conversations with Speko agents from blocking Python."""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
