"""superlens: measure superposition in vision models and how training data changes it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("superlens")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"


def analyze(models, data, layers, **kwargs):
    """The superposition lens on trained models, for notebooks; see :func:`superlens.lens.analyze`."""
    from superlens.lens import analyze as _analyze

    return _analyze(models, data, layers, **kwargs)
