"""Atomic file writes: a temp file in the same folder, then ``os.replace``.

A crash or Ctrl-C mid-write never leaves a truncated file under the final
name, so a file that exists is a file that was written completely.
"""
import contextlib
import json
import os
import tempfile

import numpy as np


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix or os.path.splitext(path)[1])
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the final file the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_npz(path, arrays):
    """Write ``arrays`` (name -> array) to ``path`` as an uncompressed ``.npz``, atomically.

    Only plain arrays: strings become unicode arrays, so the file loads with
    ``allow_pickle=False``.
    """
    with atomic_path(path, ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})


def load_npz(path):
    """Read every array of an ``.npz`` file into a dict (never unpickles)."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _to_jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path, obj):
    """Write ``obj`` as indented JSON, atomically (numpy scalars and arrays allowed)."""
    with atomic_path(path, ".json") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, default=_to_jsonable)
            f.write("\n")


class JSONFileError(ValueError):
    """A JSON file that cannot be read back: the message names the file."""


def read_json(path):
    """The JSON object in ``path``; a damaged or non-UTF-8 file raises :class:`JSONFileError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise JSONFileError(f"{path}: not a valid JSON file ({e}); delete it or write it again") from None


def save_figure(fig, path, dpi=110):
    """Save a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
