"""The two ways moving weights in or out can fail, and the lazy import of the optional packages.

* :class:`ExchangeFileError` -- a file that cannot be read as what it claims to be (a pickle, a
  truncated or lying safetensors file, a tensor missing or of the wrong shape or dtype). It is a
  :class:`~npcnn.models.ModelFileError`, so it is a ``ValueError`` and the command line prints it
  as one line.
* :class:`MissingExtraError` -- ``safetensors``, ``onnx`` or ``onnxruntime`` is not installed. They
  are optional: ``pip install "npcnn[exchange]"`` brings all three.
"""
import importlib

from ..models import ModelFileError

EXTRA = "exchange"


class ExchangeFileError(ModelFileError):
    """A weights file (safetensors, or a refused pickle) that cannot be used; the message names it."""


class MissingExtraError(ImportError):
    """An optional package of the ``exchange`` extra is not installed."""


def require(module, purpose):
    """Import ``module`` (e.g. ``"safetensors.numpy"``) or say which extra brings it.

    The exchange packages are imported here, inside functions, so that
    ``import npcnn`` works without them.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise MissingExtraError(
            f"{purpose} needs the '{top}' package, which is not installed ({e}); "
            f'install the optional extra: pip install "npcnn[{EXTRA}]" (or: pip install {top})') from None
