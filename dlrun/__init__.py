"""dlrun: a declarative training CLI on PyTorch."""

__version__ = "0.1.0"
