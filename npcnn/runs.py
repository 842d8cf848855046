"""A run folder: what training writes, and how the analysis tools read it back.

::

    RUN_DIR/
      config.json      the settings of the run (dataset, data_dir, epochs, ..., data_path: where the data was read)
      history.json     per-epoch train/test loss and accuracy, seconds
      metrics.json     final test accuracy, classification report, confusion matrix, ...
                       (written last: its presence marks a finished run)
      model.npz        weights + normalisation + class names (npcnn.models.save_model)
      samples.json     one random test image per class: the digits every analysis defaults to
      *.png            figures
      checkpoint.npz   only while training is unfinished (for --resume)
      inspect/ occlusion/ saliency/ attacks/   written by the analysis commands
"""
import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .io import read_json

FORMAT = 1


class RunDirError(ValueError):
    """Not a run folder, or one this version cannot read."""


@dataclass
class Run:
    path: str

    @classmethod
    def open(cls, path):
        """Open a finished run folder; clear errors for a missing folder, model or old format."""
        if not os.path.isdir(path):
            raise RunDirError(f"{path}: no such run folder")
        run = cls(os.fspath(path))
        if not os.path.isfile(run.file("model.npz")):
            raise RunDirError(f"{path}: no model.npz here; train one with `npcnn train --out {path}`")
        if not os.path.isfile(run.file("config.json")):
            raise RunDirError(f"{path}: no config.json here; not a run folder written by `npcnn train`")
        if run.config.get("format") != FORMAT:
            raise RunDirError(f"{path}: run folder format {run.config.get('format')!r}, this npcnn reads {FORMAT}; "
                              f"retrain with `npcnn train --out {path}`")
        return run

    def file(self, *parts):
        return os.path.join(self.path, *parts)

    @cached_property
    def config(self):
        return read_json(self.file("config.json"))

    @cached_property
    def classifier(self):
        from .classifier import load_classifier

        return load_classifier(self.file("model.npz"))

    @property
    def class_names(self):
        return self.classifier.class_names

    def data_root(self, root=None):
        """Where the run's test set is read from: ``root`` if given (told otherwise), else the run's
        ``data_dir``, else ``$NPCNN_DATA`` if set, else the folder the run was trained from (recorded in
        config.json as ``data_path``) while it still exists, else None (the usual lookup)."""
        from .data.datasets import ENV_VAR

        c = self.config
        recorded = c.get("data_path") if c.get("data_source") in ("root", "env") else None
        recorded = recorded if recorded and os.path.isdir(recorded) else None
        if root is not None:
            return root
        if c.get("data_dir"):   # as trained; a relative one seen from another folder: the recorded path
            return c["data_dir"] if os.path.isdir(c["data_dir"]) or recorded is None else recorded
        if os.environ.get(ENV_VAR):
            return None  # load_dataset reads it
        return recorded

    def test_data(self, root=None):
        """The run's test set: (uint8 images [N, 28, 28], labels [N]), from the same source it was trained on
        (see :meth:`data_root`)."""
        from .data import load_dataset

        c = self.config
        # The offline sample only if the run was trained on it: a run trained on full MNIST must
        # never be analysed on the sample's 1,000 test images (its samples.json indices would point
        # at other images).
        return load_dataset(c["dataset"], "test", root=self.data_root(root),
                            allow_sample=c.get("data_source") == "sample")

    def sample_indices(self):
        """Test-set indices of the run's chosen images (one per class), from samples.json."""
        path = self.file("samples.json")
        if not os.path.isfile(path):
            raise RunDirError(f"{self.path}: no samples.json; retrain with this version of npcnn")
        return [int(i) for i in read_json(path)["indices"]]

    def select(self, images, labels, indices=None):
        """Pick test images by index (default: the run's samples), with a clear error when out of range."""
        indices = self.sample_indices() if indices is None else [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < len(labels)]
        if bad:
            raise ValueError(f"index {bad[0]} is out of range: the test set has {len(labels)} images (0..{len(labels) - 1})")
        idx = np.asarray(indices, dtype=np.int64)
        return idx, images[idx].astype(np.float32) / np.float32(255.0), labels[idx].astype(np.int64)
