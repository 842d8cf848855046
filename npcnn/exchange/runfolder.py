"""Run folders in and out: a net trained in PyTorch becomes a run folder; a run folder's net leaves as
safetensors or ONNX.

:func:`import_torch` reads a safetensors state dict (checked tensor by tensor), measures the net
on its dataset's test set and writes the run folder every ``npcnn`` stage reads (see
:mod:`npcnn.runs`)::

    RUN_DIR/config.json    format, dataset, where the data is, class names, normalisation, versions,
                           and ``imported``: the source file, its SHA-256, the model name, the dtypes
    RUN_DIR/model.npz      the weights, as training writes them (npcnn.models.save_model)
    RUN_DIR/history.json   empty: no epoch was run here
    RUN_DIR/samples.json   one test image per class (seeded), the images the analyses default to
    RUN_DIR/confusion_matrix.png, classification_report.png, samples.png
    RUN_DIR/metrics.json   test accuracy and loss, classification report, ..., written last

The folder is built under a temporary name and renamed into place, so a failure at any point
(a bad file, no data) leaves nothing behind. :func:`export_run` writes a run's net as
safetensors and/or ONNX.
"""
import hashlib
import os
import shutil
import tempfile
import time

import numpy as np

from ..data import DATASETS, Normalization, load_dataset
from ..io import write_json
from . import registry
from .errors import ExchangeFileError
from .weights import load_weights, save_weights


class ImportFolderError(ValueError):
    """The folder an import should write cannot take a new run."""


def import_torch(path, model_name, out, *, mean=None, std=None, dataset=None, data_dir=None, class_names=None,
                 dtype="float32", seed=0, allow_sample=False, log=print):
    """Make the run folder ``out`` from the safetensors state dict at ``path`` (saved by PyTorch or npcnn).

    ``model_name`` is a registered architecture (None: the file's ``npcnn_model`` metadata). The
    normalisation is ``mean``/``std`` if given, else the file's metadata, else the mean and std
    of the dataset's training pixels (what ``npcnn train`` uses). ``dtype`` is the run's
    (float32, what every stage expects; float64 keeps a float64 file exact). Returns the metrics.
    """
    out = os.fspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ImportFolderError(f"{out} already exists and is not an empty folder; choose another --out or delete it")
    model, info = load_weights(path, model_name, dtype=dtype)
    arch = registry.get(info["model"])
    dataset = dataset or info["dataset"] or "mnist"
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    names = list(class_names or info["class_names"] or DATASETS[dataset].class_names)
    if len(names) != model[-2].out_features:
        raise ExchangeFileError(f"{path}: the net has {model[-2].out_features} outputs but {len(names)} class names")
    test_x, test_y, data = load_dataset(dataset, "test", root=data_dir, allow_sample=allow_sample, return_info=True)
    normalization, source = _normalization(mean, std, info, dataset, data_dir, allow_sample)
    if log:
        log(f"{path}: {arch.name} ({arch.description}), {info['dtype']} weights; normalisation mean "
            f"{normalization.mean:.4f}, std {normalization.std:.4f} ({source}); evaluating on {len(test_y):,} "
            f"{dataset} test images from {data.path}")
    config = {
        "format": _run_format(), "dataset": dataset, "data_dir": data_dir, "epochs": 0, "batch_size": None,
        "lr": None, "seed": seed, "batchnorm": arch.batchnorm, "limit": None, "allow_sample": allow_sample,
        "adversarial": None, "data_source": data.source, "data_path": os.path.abspath(data.path),
        "class_names": names, "normalization": normalization.as_dict(), "versions": _versions(),
        "imported": {"file": os.path.abspath(path), "sha256": _sha256(path), "model": arch.name,
                     "file_dtype": info["dtype"], "dtype": np.dtype(dtype).name, "normalization_from": source},
    }
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-import-")
    try:
        metrics = _write_run(tmp, config, model, normalization, arch, names, test_x, test_y)
        if os.path.isdir(out):
            os.rmdir(out)       # empty, checked above
        os.rename(tmp, out)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return metrics


def _normalization(mean, std, info, dataset, data_dir, allow_sample):
    """(Normalization, where it came from): the arguments, the file's metadata, or the training set."""
    if (mean is None) != (std is None):
        raise ValueError("give both --mean and --std, or neither")
    if mean is not None:
        return Normalization(mean, std), "given"
    if info["normalization"] is not None:
        return info["normalization"], "the file's metadata"
    train_x, _ = load_dataset(dataset, "train", root=data_dir, allow_sample=allow_sample)
    return Normalization.from_images(train_x), f"the {dataset} training set, as npcnn train computes it"


def _write_run(folder, config, model, normalization, arch, names, test_x, test_y):
    """Evaluate the net on the test set and write every file of the run folder into ``folder``."""
    from sklearn.metrics import classification_report, confusion_matrix

    from .. import plots  # noqa: F401  (selects the Agg backend)
    from ..classifier import Classifier
    from ..experiments.training import pick_samples
    from ..io import save_figure
    from ..models import count_neurons, count_parameters, save_model, summary_rows
    from ..plots import training as training_plots
    from ..train import Evaluation

    labels = np.asarray(test_y, dtype=np.int64)
    clf = Classifier(model, normalization, class_names=names)
    probabilities = clf.predict_proba(test_x.astype(np.float32) / np.float32(255)).astype(np.float64)
    predictions = probabilities.argmax(axis=1)
    loss = float(-np.mean(np.log(np.maximum(probabilities[np.arange(len(labels)), labels], 1e-300))))
    result = Evaluation(loss=loss, accuracy=float((predictions == labels).mean()), predictions=predictions,
                        probabilities=probabilities)
    write_json(os.path.join(folder, "config.json"), config)
    save_model(os.path.join(folder, "model.npz"), model, normalization, batchnorm=arch.batchnorm,
               dataset=config["dataset"], class_names=names, architecture=arch.npz_architecture)
    write_json(os.path.join(folder, "history.json"),
               {"train_loss": [], "train_accuracy": [], "test_loss": [], "test_accuracy": [], "seconds": []})
    samples = pick_samples(labels, result, config["seed"], len(names))
    write_json(os.path.join(folder, "samples.json"), samples)
    classes = list(range(len(names)))
    report = classification_report(labels, predictions, labels=classes, target_names=names, output_dict=True,
                                   zero_division=0)
    matrix = confusion_matrix(labels, predictions, labels=classes)
    save_figure(training_plots.confusion_matrix(matrix, names), os.path.join(folder, "confusion_matrix.png"))
    save_figure(training_plots.classification_report(report, names), os.path.join(folder, "classification_report.png"))
    images = test_x[samples["indices"]].astype(np.float32) / 255
    save_figure(training_plots.sample_predictions(images, samples["labels"], samples["predicted"],
                                                  samples["probability"], names), os.path.join(folder, "samples.png"))
    metrics = {
        "test_accuracy": result.accuracy, "test_loss": result.loss, "classification_report": report,
        "confusion_matrix": matrix.tolist(),
        # trained elsewhere: no training time here (one zero keeps the report's per-epoch mean finite)
        "train_seconds": 0.0, "seconds_per_epoch": [0.0],
        "parameters": count_parameters(model), "neurons": count_neurons(model), "layers": summary_rows(model),
        "dataset": config["dataset"], "data_source": config["data_source"], "batchnorm": arch.batchnorm,
        "epochs": 0, "imported": config["imported"], "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(os.path.join(folder, "metrics.json"), metrics)
    return metrics


def _run_format():
    from ..runs import FORMAT

    return FORMAT


def _versions():
    from ..experiments.training import library_versions

    return library_versions()


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_run(run_dir, *, onnx=None, safetensors=None, check=True):
    """Write the net of the run folder ``run_dir`` as ONNX (to ``onnx``) and/or safetensors (to ``safetensors``).

    With ``check`` and ONNX Runtime installed, the exported graph is run on a fixed batch of
    random images and compared with npcnn. Returns ``{"onnx": path, "safetensors": path,
    "onnx_max_diff": float}`` for what was written.
    """
    from ..runs import Run
    from .onnx_export import build_onnx, save_onnx

    if onnx is None and safetensors is None:
        raise ValueError("nothing to export: give --onnx FILE and/or --safetensors FILE")
    run = Run.open(run_dir)
    clf = run.classifier
    name = registry.name_of(clf.info["batchnorm"], clf.info.get("architecture", "seed_cnn"))
    written = {}
    if onnx is not None:
        graph = build_onnx(clf.model, clf.normalization, class_names=clf.class_names, name=name)
        if check:
            written["onnx_max_diff"] = _check_onnx(graph, clf, registry.get(name).input_shape)
        written["onnx"] = save_onnx(onnx, graph)
    if safetensors is not None:
        written["safetensors"] = save_weights(safetensors, clf.model, clf.normalization, model_name=name,
                                              class_names=clf.class_names, dataset=clf.info["dataset"])
    return written


def _check_onnx(graph, clf, input_shape, n=64):
    """Max |probability difference| between ONNX Runtime and npcnn on ``n`` seeded random images, or None
    if ONNX Runtime is not installed."""
    from .errors import MissingExtraError
    from .onnx_export import run_onnx

    x = np.random.default_rng(0).random((n, *input_shape), dtype=np.float32)
    try:
        _, probabilities = run_onnx(graph, x)
    except MissingExtraError:
        return None
    return float(np.max(np.abs(probabilities - clf.predict_proba(x))))
