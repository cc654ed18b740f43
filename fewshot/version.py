"""The version of the fewshot distribution (one place: the package and reports read it here)."""

__version__ = "0.1.0"
