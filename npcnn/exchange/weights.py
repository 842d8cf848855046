"""A model's weights as safetensors, with PyTorch's key names and layouts, checked tensor by tensor.

npcnn's layers already follow PyTorch (``Conv2d.weight`` is (out, in, kh, kw), ``Linear.weight``
is (out, in), BatchNorm keeps ``running_mean``, the unbiased ``running_var`` and an int64
``num_batches_tracked``), so ``model.state_dict()`` *is* the PyTorch state dict: the same keys
(``0.weight``, ``3.running_mean``), shapes and dtypes. A file written by :func:`save_weights`
loads with ``model.load_state_dict(safetensors.torch.load_file(path))`` on the PyTorch twin, and a
file saved in PyTorch with ``save_file(model.state_dict(), path)`` loads with :func:`load_weights`.

The file's string metadata carries what inference needs besides the weights (all optional when
reading; a PyTorch user may add ``mean`` and ``std`` with ``save_file(..., metadata={...})``)::

    npcnn_model   the registered architecture name (npcnn.exchange.registry), e.g. "seed-cnn-bn"
    mean, std     the input normalisation z = (x - mean) / std of pixels in [0, 1], as decimal text
    class_names   a JSON list of strings
    dataset       "mnist", "fashion-mnist", ...
"""
import json

import numpy as np

from .. import __version__
from ..data import Normalization
from . import registry
from .errors import ExchangeFileError
from .safetensors_file import read_safetensors, write_safetensors

FLOAT_CODES = {"F32": np.float32, "F64": np.float64}
INT_BUFFERS = ("num_batches_tracked",)   # PyTorch keeps these as int64 scalars


def save_weights(path, model, normalization=None, *, model_name, class_names=None, dataset=None):
    """Write ``model``'s state dict to ``path`` as safetensors (atomically), with its metadata.

    ``model_name`` must be registered (:mod:`npcnn.exchange.registry`); ``normalization`` is an
    :class:`~npcnn.data.Normalization` (or None), ``class_names`` a list of strings.
    """
    registry.get(model_name)
    metadata = {"npcnn_model": model_name, "written_by": f"npcnn {__version__}"}
    if normalization is not None:
        metadata.update(mean=repr(float(normalization.mean)), std=repr(float(normalization.std)))
    if class_names is not None:
        metadata["class_names"] = json.dumps([str(c) for c in class_names])
    if dataset is not None:
        metadata["dataset"] = str(dataset)
    return write_safetensors(path, model.state_dict(), metadata)


def load_weights(path, model_name=None, *, dtype=None):
    """Read a safetensors state dict into a new net of the registered architecture ``model_name``.

    ``model_name`` defaults to the file's ``npcnn_model`` metadata; ``dtype`` (float32 or float64)
    defaults to the file's. Every key, shape and dtype is checked before the net is touched; the
    first wrong one raises :class:`ExchangeFileError` naming the file and the tensor.

    Returns ``(model, info)``: the net in eval mode, and a dict with ``model`` (the name),
    ``dtype`` (the file's), ``normalization`` (a Normalization or None), ``class_names`` (or
    None), ``dataset`` (or None) and ``metadata`` (all of it, as strings).
    """
    tensors, metadata = read_safetensors(path)
    name = model_name or metadata.get("npcnn_model")
    if name is None:
        raise ExchangeFileError(f"{path}: which network are these weights for? The file does not say "
                                f"(no npcnn_model metadata); name one: {', '.join(sorted(registry.ARCHITECTURES))}")
    try:
        arch = registry.get(name)
    except ValueError as e:
        raise ExchangeFileError(f"{path}: {e}") from None
    info = read_metadata(path, metadata)
    file_dtype = float_dtype(path, tensors)
    dtype = np.dtype(dtype or file_dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    num_classes = len(info["class_names"]) if info["class_names"] else 10
    model = arch.build(num_classes=num_classes, dtype=dtype)
    try:
        check_tensors(path, tensors, model.state_dict(), name)
    except ExchangeFileError as e:
        fits = [a for a in sorted(registry.ARCHITECTURES) if a != name and _fits(tensors, a, num_classes)]
        if fits:
            raise ExchangeFileError(f"{e} These tensors fit {fits[0]}: try --model {fits[0]}") from None
        raise
    model.load_state_dict({k: v.astype(dtype, copy=False) if k.split(".")[-1] not in INT_BUFFERS else v
                           for k, v in tensors.items()})
    return model.eval(), {**info, "model": name, "dtype": file_dtype.name, "metadata": dict(metadata)}


def float_dtype(path, tensors):
    """The one floating dtype of the file's tensors (float32 or float64), or an error naming the odd tensor."""
    found = {}
    for key, value in tensors.items():
        if key.split(".")[-1] in INT_BUFFERS:
            continue
        code = {np.dtype(t): c for c, t in FLOAT_CODES.items()}.get(value.dtype)
        if code is None:
            raise ExchangeFileError(f"{path}: tensor {key!r} is {value.dtype}; npcnn reads float32 or float64 "
                                    f"weights (in PyTorch: model.float() or model.double() before saving)")
        found.setdefault(value.dtype, key)
    if len(found) > 1:
        (a, ka), (b, kb) = sorted(found.items(), key=str)[:2]
        raise ExchangeFileError(f"{path}: mixed dtypes: {ka!r} is {a}, {kb!r} is {b}; save all weights in one dtype")
    return next(iter(found), np.dtype(np.float32))


def _fits(tensors, name, num_classes):
    """Whether the tensors have exactly the keys and shapes of the architecture ``name``."""
    expected = registry.get(name).build(num_classes=num_classes).state_dict()
    return set(tensors) == set(expected) and all(tensors[k].shape == v.shape for k, v in expected.items())


def check_tensors(path, tensors, expected, model_name):
    """Compare the file's tensors with the state dict ``expected``: the same keys, shapes and dtype kinds.

    Raises :class:`ExchangeFileError` naming the first missing, unexpected, misshapen, wrongly typed
    or non-finite tensor.
    """
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    hint = f"is it a {model_name} net?"
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ExchangeFileError(f"{path}: missing tensor {missing[0]!r}{more} that {model_name} needs; {hint}")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ExchangeFileError(f"{path}: unexpected tensor {unexpected[0]!r}{more}, not part of {model_name}; {hint}")
    for key, want in expected.items():
        got = tensors[key]
        if got.shape != want.shape:
            raise ExchangeFileError(f"{path}: tensor {key!r} has shape {got.shape}, {model_name} expects {want.shape}")
        if key.split(".")[-1] in INT_BUFFERS:
            if got.dtype != np.int64:
                raise ExchangeFileError(f"{path}: tensor {key!r} is {got.dtype}, expected int64 (as PyTorch saves it)")
        elif not np.all(np.isfinite(got)):
            raise ExchangeFileError(f"{path}: tensor {key!r} holds NaN or infinite values")


def read_metadata(path, metadata):
    """The normalisation, class names and dataset recorded in the metadata (None where absent)."""
    normalization = None
    if ("mean" in metadata) != ("std" in metadata):
        raise ExchangeFileError(f"{path}: the metadata has only one of mean and std; give both or neither")
    if "mean" in metadata:
        try:
            normalization = Normalization(float(metadata["mean"]), float(metadata["std"]))
        except ValueError as e:
            raise ExchangeFileError(f"{path}: metadata mean/std {metadata['mean']!r}/{metadata['std']!r}: {e}") from None
    class_names = None
    if "class_names" in metadata:
        try:
            class_names = json.loads(metadata["class_names"])
        except json.JSONDecodeError:
            class_names = None
        if not (isinstance(class_names, list) and class_names and all(isinstance(c, str) for c in class_names)):
            raise ExchangeFileError(f"{path}: metadata class_names is not a JSON list of strings")
    return {"normalization": normalization, "class_names": class_names, "dataset": metadata.get("dataset")}
