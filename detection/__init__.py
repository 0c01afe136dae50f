"""The training engine: configs, builders, trainer, evaluation.

The project's data package is a top-level package named ``datasets``, a name it shares with a popular
PyPI package. Importing the engine checks that ``import datasets`` finds ours, and says how to fix it
otherwise, instead of failing later with a confusing AttributeError.
"""
import datasets as _datasets

if not getattr(_datasets, "IS_DETECTION_DATASETS", False):
    raise ImportError(
        f"'import datasets' found {getattr(_datasets, '__file__', _datasets)!r}, which is not this project's "
        "datasets package (probably the PyPI package of the same name). Install this project with "
        "'pip install -e .' and run from its root, or uninstall the other package ('pip uninstall datasets')."
    )


def load_model(path: str, device="cpu", overrides=()):
    """The eval-mode detector of a checkpoint written by scripts/train.py, built from the config saved in it,
    on ``device``; ``model.classes`` holds its class names. See :func:`detection.checkpoint.state.load_model`."""
    from detection.checkpoint.state import load_model as _load_model  # imports the model stack: only when called

    return _load_model(path, device, overrides)
