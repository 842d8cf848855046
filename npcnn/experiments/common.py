"""What every stage shares: opening the run, choosing its test images, and writing its folder.

A stage writes through a :class:`Writer`, which remembers the final path of
every file (the ``files`` of the stage's result). :func:`output_folder`
writes a whole ``RUN_DIR/<stage>/`` under a temporary name and renames it
when complete, so a failed or interrupted stage leaves the previous results
(or nothing), never a half-written folder. Each file is itself written
atomically (:mod:`npcnn.io`), and every stage writes its ``.npz`` last.
"""
import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np

from .. import io
from ..runs import Run


@dataclass
class StageOutput:
    """What a stage wrote: its folder and its files (final paths, in the order written: the .npz last)."""

    folder: str
    files: list = field(default_factory=list)

    def describe(self):
        """One or a few lines for a person: what was computed and where it went."""
        return f"written to {self.folder}"


def open_run(run):
    """A :class:`~npcnn.runs.Run`, given one or the path of a run folder."""
    return run if isinstance(run, Run) else Run.open(run)


def chosen_images(run, indices=None):
    """The chosen test images: indices, pixel images [N, 28, 28] in [0, 1], labels (default: the run's samples)."""
    images, labels = run.test_data()
    idx, x, y = run.select(images, labels, indices)
    if len(idx) == 0:
        raise ValueError("no images chosen")
    return idx, x, y


class Writer:
    """Writes figures and arrays into ``folder``; records each under its final name in ``final``."""

    def __init__(self, folder, final=None):
        self.folder, self.final, self.files = folder, final or folder, []

    def _path(self, name):
        self.files.append(os.path.join(self.final, name))
        return os.path.join(self.folder, name)

    def figure(self, fig, name):
        io.save_figure(fig, self._path(name))

    def npz(self, name, arrays):
        io.save_npz(self._path(name), arrays)


@contextlib.contextmanager
def output_folder(run, name):
    """A :class:`Writer` into a fresh temporary folder inside the run; renamed onto ``RUN_DIR/name`` if the
    block succeeds (replacing the previous results), removed if it fails."""
    final = run.file(name)
    if os.path.exists(final) and not os.path.isdir(final):
        raise ValueError(f"{final} exists and is not a folder")
    tmp = tempfile.mkdtemp(dir=run.path, prefix=f".{name}-partial-")
    try:
        yield Writer(tmp, final)
        old = None
        if os.path.exists(final):
            old = tmp + "-old"
            os.replace(final, old)
        os.replace(tmp, final)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def one_or_pair(values, what):
    """``10`` or ``[10]`` -> 10; ``(6, 8)`` -> (6, 8); anything longer is an error naming the setting."""
    if np.ndim(values) == 0:
        return values
    values = list(values)
    if len(values) not in (1, 2):
        raise ValueError(f"--{what} takes one or two numbers, got {len(values)}")
    return values[0] if len(values) == 1 else tuple(values)
