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


def measure_superposition(activations, *, seeds=3, labels=None, layer_name=None, device=None, **settings):
    """Superposition of an (n, neurons) activation matrix by the validated protocol: psi (effective
    features per neuron) with its SD over SAE seeds, and the dictionary metrics; see
    :func:`superlens.analysis.superposition.measure_superposition` and docs/superposition.md."""
    from superlens.analysis.superposition import measure_superposition as _measure

    return _measure(activations, seeds=seeds, labels=labels, layer_name=layer_name, device=device, **settings)


def load_sae(path, device=None):
    """A sparse autoencoder saved by a study, ``superlens analyze`` or ``superlens browse`` (a
    ``sae-<layer>/`` folder): ``sae.codes(x)`` encodes raw activations of its layer (channel vectors),
    ``sae(x)`` reconstructs them, ``sae.cfg`` says how it was trained; see :mod:`superlens.saefiles`."""
    from superlens.saefiles import load_sae as _load

    return _load(path, device)
