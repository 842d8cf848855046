"""The safetensors file format, checked byte by byte before anything is trusted.

A safetensors file (https://huggingface.co/docs/safetensors) is three parts::

    8 bytes     N, the length of the header: an unsigned 64-bit little-endian integer
    N bytes     the header: a UTF-8 JSON object (possibly padded with spaces)
                  {"0.weight": {"dtype": "F32", "shape": [32, 1, 3, 3], "data_offsets": [0, 1152]},
                   ...,
                   "__metadata__": {"mean": "0.1307", ...}}        (strings to strings, optional)
    the rest    the tensors' bytes, little-endian, C order; data_offsets are [begin, end) into this part

No code runs when it is read (a PyTorch ``.pt`` file is a pickle, and unpickling can run anything),
which is why npcnn exchanges weights this way. :func:`read_safetensors` checks the length field
against the file's size, the JSON, every entry's dtype, shape and offsets (contiguous, no gap,
no overlap, covering the data exactly) itself, so each problem gets its own sentence naming the
file; only then does ``safetensors.numpy`` (the reference parser, an optional extra) decode the
bytes. :func:`write_safetensors` writes atomically (a temporary file, then a rename).
"""
import json
import os

from ..io import atomic_path
from .errors import ExchangeFileError, require

# safetensors dtype codes npcnn knows the size of (the format has more: F8 variants, ...)
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4,
            "F32": 4, "F64": 8, "I64": 8, "U64": 8}
MAX_HEADER = 100_000_000   # the reference implementation's limit too
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".tar")

HOW_TO_SAVE = ("save the weights as safetensors instead, in PyTorch: "
               "`from safetensors.torch import save_file; save_file(model.state_dict(), 'net.safetensors')`")


def _fail(path, problem):
    raise ExchangeFileError(f"{path}: {problem}")


def refuse_pickle(path, head=b""):
    """Raise if ``path`` is (or is named like) a pickle: a ``.pt``/``.pth`` file or a torch zip archive."""
    looks_like = head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05")
    if os.fspath(path).lower().endswith(PICKLE_SUFFIXES) or looks_like:
        _fail(path, "a PyTorch/pickle file; npcnn never unpickles (loading a pickle can run any code); "
              + HOW_TO_SAVE)


def parse_header(path, data):
    """Check the framing and the header of the file's bytes ``data``; return ``(entries, metadata, start)``.

    ``entries`` maps each tensor name to ``(dtype code, shape tuple, begin, end)`` (offsets into the
    data part), ``metadata`` is the ``__metadata__`` dict (empty if absent) and ``start`` is where
    the data part begins in ``data``.
    """
    refuse_pickle(path, data[:4])
    if len(data) < 8:
        _fail(path, f"truncated: {len(data)} bytes, but a safetensors file starts with an 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER:
        _fail(path, f"not a safetensors file: its first 8 bytes give a header length of {n:,} bytes")
    if n > len(data) - 8:
        _fail(path, f"the header claims {n:,} bytes but only {len(data) - 8:,} follow the length field "
              f"(truncated, or not a safetensors file)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(path, f"the {n:,}-byte header is not valid JSON ({e}); the header length may be wrong")
    if not isinstance(header, dict):
        _fail(path, "the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        _fail(path, "__metadata__ must map strings to strings")
    entries = {name: _entry(path, name, info) for name, info in header.items()}
    _check_layout(path, entries, len(data) - 8 - n)
    return entries, metadata, 8 + n


def _entry(path, name, info):
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        _fail(path, f"tensor {name!r}: a header entry needs exactly dtype, shape and data_offsets, got {info!r}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in ITEMSIZE:
        _fail(path, f"tensor {name!r}: dtype {dtype!r} is not one npcnn reads")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        _fail(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        _fail(path, f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end] with 0 <= begin <= end")
    size = ITEMSIZE[dtype]
    for d in shape:
        size *= d
    if offsets[1] - offsets[0] != size:
        _fail(path, f"tensor {name!r}: {dtype} of shape {tuple(shape)} needs {size:,} bytes, "
              f"its data_offsets span {offsets[1] - offsets[0]:,}")
    return dtype, tuple(shape), offsets[0], offsets[1]


def _check_layout(path, entries, available):
    """The tensors' byte ranges must tile the data part exactly: no gap, no overlap, nothing missing."""
    end = 0
    for name, (_, _, begin, stop) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != end:
            what = "overlaps the tensor before it" if begin < end else "leaves a gap before it"
            _fail(path, f"tensor {name!r}: its data_offsets start at {begin:,}, which {what} (expected {end:,})")
        end = stop
    if end > available:
        _fail(path, f"truncated: the tensors need {end:,} bytes of data after the header, the file has {available:,}")
    if end < available:
        _fail(path, f"{available - end:,} bytes after the last tensor that no header entry describes")


def read_safetensors(path):
    """``(tensors, metadata)`` from a safetensors file: numpy arrays by name, and the string metadata.

    Every problem -- no such file, a pickle, a truncated file, a header that lies about its
    length, a broken entry -- raises :class:`ExchangeFileError` with the file's name in it.
    """
    path = os.fspath(path)
    refuse_pickle(path)
    if not os.path.isfile(path):
        _fail(path, "no such file")
    with open(path, "rb") as f:
        data = f.read()
    entries, metadata, _ = parse_header(path, data)
    for name, (dtype, *_) in entries.items():
        if dtype == "BF16":
            _fail(path, f"tensor {name!r} is bfloat16, which NumPy cannot hold; save float32 weights "
                  f"(in PyTorch: model.float() before saving)")
    st = require("safetensors.numpy", "reading safetensors files")
    try:
        tensors = st.load(data)
    except Exception as e:   # the reference parser disagrees with the checks above: still one line
        _fail(path, f"not a readable safetensors file ({type(e).__name__}: {e})")
    if set(tensors) != set(entries):
        _fail(path, "the safetensors parser found other tensors than the header lists")
    return tensors, metadata


def write_safetensors(path, tensors, metadata=None):
    """Write ``tensors`` (name -> numpy array) and string ``metadata`` to ``path``, atomically."""
    import numpy as np

    st = require("safetensors.numpy", "writing safetensors files")
    arrays = {k: np.asarray(v, order="C") for k, v in tensors.items()}   # (ascontiguousarray makes 0-d 1-d)
    data = st.save(arrays, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    with atomic_path(path, ".safetensors") as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return os.fspath(path)
