"""The reference network of the report, and a summary table for any Sequential."""
import numpy as np

from .nn import BatchNorm2d, Conv2d, Flatten, Linear, LogSoftmax, MaxPool2d, ReLU, Sequential
from .nn.init import as_generator


def seed_cnn(batchnorm=False, num_classes=10, *, dtype=np.float32, rng=0):
    """The report's CNN for 1x28x28 images.

    conv(1->32, 3x3, p1) -> ReLU -> maxpool 2 -> [BN] -> conv(32->32, 3x3, p1) -> ReLU
    -> maxpool 2 -> [BN] -> flatten -> linear(1568->500) -> ReLU -> linear(500->10) -> log-softmax.

    799,078 parameters without BatchNorm (799,206 with). ``rng`` seeds the
    initialisation (an int, a Generator, or None for fresh entropy).
    """
    rng = as_generator(rng)
    layers = [Conv2d(1, 32, 3, padding=1, dtype=dtype, rng=rng), ReLU(), MaxPool2d(2)]
    if batchnorm:
        layers.append(BatchNorm2d(32, dtype=dtype))
    layers += [Conv2d(32, 32, 3, padding=1, dtype=dtype, rng=rng), ReLU(), MaxPool2d(2)]
    if batchnorm:
        layers.append(BatchNorm2d(32, dtype=dtype))
    layers += [
        Flatten(),
        Linear(32 * 7 * 7, 500, dtype=dtype, rng=rng),
        ReLU(),
        Linear(500, num_classes, dtype=dtype, rng=rng),
        LogSoftmax(dim=1),
    ]
    return Sequential(*layers)


def count_parameters(model):
    return int(sum(p.size for p in model.parameters()))


def layer_neurons(layer):
    """The report's "neurons" count: every conv kernel weight (out*in*kh*kw) and every fc output unit.

    This is the convention that gives the report's 10,014 for the reference
    net (32*1*3*3 + 32*32*3*3 + 500 + 10).
    """
    if isinstance(layer, Conv2d):
        return int(layer.weight.size)
    if isinstance(layer, Linear):
        return layer.out_features
    return 0


def count_neurons(model):
    return int(sum(layer_neurons(layer) for layer in model))


def summary_rows(model, input_shape=(1, 1, 28, 28)):
    """One dict per layer: index, name, output shape (batch dim dropped), parameters, neurons."""
    shape = tuple(input_shape)
    rows = []
    for i, layer in enumerate(model):
        if hasattr(layer, "output_shape"):
            shape = tuple(layer.output_shape(shape))
        rows.append({
            "index": i,
            "layer": repr(layer),
            "output_shape": list(shape[1:]),
            "parameters": int(sum(p.size for p in layer.parameters())),
            "neurons": layer_neurons(layer),
        })
    return rows


def summary(model, input_shape=(1, 1, 28, 28)):
    """A printable table of each layer's output shape and parameter count, with totals."""
    rows = summary_rows(model, input_shape)
    width = max(len(r["layer"]) for r in rows) + 2
    lines = [f"{'#':>3}  {'layer':<{width}}{'output shape':<16}{'params':>10}", "-" * (width + 31)]
    for r in rows:
        shape = "x".join(map(str, r["output_shape"]))
        lines.append(f"{r['index']:>3}  {r['layer']:<{width}}{shape:<16}{r['parameters']:>10,}")
    lines.append("-" * (width + 31))
    lines.append(f"total parameters: {count_parameters(model):,}   neurons: {count_neurons(model):,}")
    return "\n".join(lines)


MODEL_FORMAT = 1
_META = "meta."


class ModelFileError(ValueError):
    """A model file is missing, damaged, or not one npcnn wrote."""


def save_model(path, model, normalization, *, batchnorm, dataset="mnist", class_names=None):
    """Write the reference net's weights with everything inference needs, as one ``.npz``.

    Besides the state dict (PyTorch keys), the file holds ``meta.*`` arrays:
    the architecture and its BatchNorm flag, the input normalisation
    (mean, std of the training pixels in [0, 1]), the dataset and its class
    names, and a format version. Written atomically, loads without pickle.
    """
    from .io import save_npz

    class_names = list(class_names) if class_names is not None else [str(i) for i in range(10)]
    meta = {
        "format": np.array(MODEL_FORMAT),
        "architecture": np.array("seed_cnn"),
        "batchnorm": np.array(bool(batchnorm)),
        "mean": np.array(normalization.mean, dtype=np.float64),
        "std": np.array(normalization.std, dtype=np.float64),
        "dataset": np.array(dataset),
        "class_names": np.array(class_names),
        "dtype": np.array(np.dtype(model.parameters()[0].dtype).name),
    }
    save_npz(path, {**model.state_dict(), **{_META + k: v for k, v in meta.items()}})


def load_model(path):
    """Read a file written by :func:`save_model`.

    Returns ``(model, normalization, meta)``: the net in eval mode, a
    :class:`~npcnn.data.Normalization`, and a dict with ``batchnorm``,
    ``dataset``, ``class_names``.
    """
    import os
    import zipfile

    from .data import Normalization
    from .io import load_npz

    if not os.path.isfile(path):
        raise ModelFileError(f"no model file at {path} (train one with `npcnn train --out DIR`)")
    try:
        arrays = load_npz(path)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ModelFileError(f"{path}: not a readable .npz model file ({e})") from None
    meta = {k[len(_META):]: v for k, v in arrays.items() if k.startswith(_META)}
    if "format" not in meta or "architecture" not in meta:
        raise ModelFileError(f"{path}: no npcnn metadata; was it written by npcnn.models.save_model?")
    if int(meta["format"]) != MODEL_FORMAT:
        raise ModelFileError(f"{path}: model format {int(meta['format'])}, this npcnn reads format {MODEL_FORMAT}; "
                             f"retrain with this version")
    if str(meta["architecture"]) != "seed_cnn":
        raise ModelFileError(f"{path}: unknown architecture {str(meta['architecture'])!r}")
    batchnorm = bool(meta["batchnorm"])
    class_names = [str(c) for c in meta["class_names"]]
    model = seed_cnn(batchnorm=batchnorm, num_classes=len(class_names), dtype=np.dtype(str(meta["dtype"])))
    try:
        model.load_state_dict({k: v for k, v in arrays.items() if not k.startswith(_META)})
    except (KeyError, ValueError) as e:
        raise ModelFileError(f"{path}: weights do not fit the architecture: {e}") from None
    normalization = Normalization(float(meta["mean"]), float(meta["std"]))
    info = {"batchnorm": batchnorm, "dataset": str(meta["dataset"]), "class_names": class_names}
    return model.eval(), normalization, info
