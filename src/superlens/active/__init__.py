"""Active learning: persisted pool state, a strategy registry, and the round loop."""

from superlens.active.pool import Pool, initial_set
from superlens.active.strategies import REGISTRY, QueryInputs, get

__all__ = ["Pool", "initial_set", "REGISTRY", "QueryInputs", "get"]
