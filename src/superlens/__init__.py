"""superlens: measure superposition in vision models and how training data changes it."""

__version__ = "0.1.0"
