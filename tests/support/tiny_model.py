"""Moved to harness/tiny_model.py (the demo and benchmarks use it too); kept for the tests."""

from harness.tiny_model import make_tiny_model

__all__ = ["make_tiny_model"]
