"""superlens: measure superposition in vision models and how training data changes it."""

__version__ = "0.1.0"


def analyze(models, data, layers, **kwargs):
    """The superposition lens on trained models, for notebooks; see :func:`superlens.lens.analyze`."""
    from superlens.lens import analyze as _analyze

    return _analyze(models, data, layers, **kwargs)
