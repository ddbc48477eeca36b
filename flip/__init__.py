"""flip: declarative federated learning for healthcare."""

__version__ = "0.1.0"
