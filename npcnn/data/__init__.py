"""The data layer: IDX files, MNIST / Fashion-MNIST, normalisation and mini-batches.

- :mod:`~npcnn.data.idx`: :func:`read_idx` reads any IDX file, raw or gzip.
- :mod:`~npcnn.data.download`: :func:`download_file`, verified and atomic.
- :mod:`~npcnn.data.datasets`: :func:`load_mnist`, :func:`load_fashion_mnist`,
  :func:`load_dataset` (root / ``$NPCNN_DATA`` / cache / system / download /
  offline sample) and the :data:`DATASETS` registry.
- :mod:`~npcnn.data.transforms`: :func:`compute_mean_std`, :class:`Normalization`,
  :func:`to_float_images`, :func:`batches`.

>>> images, labels = load_mnist("train")                        # doctest: +SKIP
>>> norm = Normalization.from_images(images)                     # doctest: +SKIP
>>> for x, y in batches(images, labels, 64, seed=0, normalization=norm):  # doctest: +SKIP
...     ...
"""
from .datasets import (DATASETS, ChecksumError, DatasetInfo, DatasetNotFoundError, DatasetSpec, SampleDataWarning,
                       cache_dir, fetch_dataset, get_spec, load_dataset, load_fashion_mnist, load_mnist)
from .download import DownloadError, download_file, sha256_file
from .idx import IDXError, parse_idx, read_idx
from .transforms import Batches, Normalization, batches, compute_mean_std, to_float_images

__all__ = [
    "read_idx", "parse_idx", "IDXError",
    "download_file", "sha256_file", "DownloadError",
    "load_mnist", "load_fashion_mnist", "load_dataset", "fetch_dataset", "get_spec", "cache_dir",
    "DATASETS", "DatasetSpec", "DatasetInfo", "DatasetNotFoundError", "ChecksumError", "SampleDataWarning",
    "compute_mean_std", "Normalization", "to_float_images", "batches", "Batches",
]
