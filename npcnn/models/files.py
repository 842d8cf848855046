"""save_model / load_model: a trained net, its normalisation and its architecture's name in one .npz."""
import numpy as np

from .catalog import MODELS, build_model, model_name

MODEL_FORMAT = 1
_META = "meta."


class ModelFileError(ValueError):
    """A model file is missing, damaged, or not one npcnn wrote."""


def save_model(path, model, normalization, *, batchnorm=False, dataset="mnist", class_names=None,
               architecture="seed-cnn"):
    """Write a net's weights with everything inference needs, as one ``.npz``.

    Besides the state dict (PyTorch keys), the file holds ``meta.*`` arrays:
    the architecture's name (a :data:`~npcnn.models.MODELS` name; the reference
    net is recorded as ``seed_cnn``, as files always have, with its BatchNorm
    flag), the input normalisation (mean, std of the training pixels in
    [0, 1]), the dataset and its class names, and a format version. Written
    atomically, loads without pickle.
    """
    from ..io import save_npz

    name = model_name(architecture)
    if batchnorm and name != "seed-cnn":
        raise ValueError(f"save_model: batchnorm=True describes the reference net only, not {name}")
    class_names = list(class_names) if class_names is not None else [str(i) for i in range(10)]
    meta = {
        "format": np.array(MODEL_FORMAT),
        "architecture": np.array("seed_cnn" if name == "seed-cnn" else name),
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
    ``dataset``, ``class_names``, ``model`` (its :data:`~npcnn.models.MODELS`
    name) and ``architecture`` (the name as the file records it: ``seed_cnn``
    for the reference net).
    """
    import os
    import zipfile

    from ..data import Normalization
    from ..io import load_npz

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
    architecture = str(meta["architecture"])
    name = "seed-cnn" if architecture == "seed_cnn" else architecture
    if name not in MODELS:
        raise ModelFileError(f"{path}: unknown architecture {architecture!r}; known: {', '.join(MODELS)}")
    batchnorm = bool(meta["batchnorm"]) and name == "seed-cnn"
    class_names = [str(c) for c in meta["class_names"]]
    model = build_model(name, len(class_names), batchnorm=batchnorm, dtype=np.dtype(str(meta["dtype"])))
    try:
        model.load_state_dict({k: v for k, v in arrays.items() if not k.startswith(_META)})
    except (KeyError, ValueError) as e:
        raise ModelFileError(f"{path}: weights do not fit the architecture: {e}") from None
    normalization = Normalization(float(meta["mean"]), float(meta["std"]))
    info = {"batchnorm": batchnorm, "dataset": str(meta["dataset"]), "class_names": class_names, "model": name,
            "architecture": architecture}
    return model.eval(), normalization, info
