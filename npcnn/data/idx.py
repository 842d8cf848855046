"""Reading IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number -- two zero bytes, an element type code
and the number of dimensions -- then each dimension as a big-endian uint32,
then the elements in C order, big-endian. Files are often gzip-compressed;
the reader recognises that by the gzip magic bytes ``1f 8b``, not by the name.

The whole file is checked before anything is returned: the magic number, the
header, and that the payload has exactly the length the dimensions promise.
"""
import gzip
import io
import math
import os
import struct
import zlib

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"

#: IDX type code -> element dtype as stored in the file (big-endian).
IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_TYPE_NAMES = "0x08 ubyte, 0x09 sbyte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64"

# Deflate expands by at most ~1032:1, so a gzip file of n bytes cannot hold much
# more than 1032 * n bytes. A header that promises more is truncated (or lying),
# and we must not allocate what it asks for.
_MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 20


class IDXError(ValueError):
    """An IDX file is malformed. The message names the file and what is wrong."""


def read_idx(path):
    """Read an IDX file (raw or gzip-compressed) into a NumPy array.

    Parameters
    ----------
    path : str or os.PathLike
        The file. Compression is detected from its first two bytes.

    Returns
    -------
    numpy.ndarray
        Writable, native-endian array with the file's shape and element type
        (uint8, int8, int16, int32, float32 or float64).

    Raises
    ------
    IDXError
        Bad magic number, unsupported element type, truncated header, payload
        shorter ("truncated by N bytes") or longer ("N trailing bytes") than the
        dimensions say, or corrupt gzip data. No partial data is ever returned.
    """
    return parse_idx(read_bytes(path), name=os.fspath(path))


def read_bytes(path):
    """The whole file as a writable ``bytearray``, read without an extra copy."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = bytearray(size)
        with memoryview(data) as view:
            got = 0
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
        if got < size:  # the file shrank while we read it
            del data[got:]
        rest = f.read()  # ... or grew
    return data + rest if rest else data


def parse_idx(data, name="<bytes>"):
    """Parse the bytes of an IDX file (raw or gzip); see :func:`read_idx`.

    ``name`` is used in error messages. If ``data`` is a writable buffer
    (``bytearray``) holding a raw file, the returned array is a view of it.
    """
    if bytes(data[:2]) == GZIP_MAGIC:
        return _parse_gzip(data, name)
    return _parse_raw(data, name)


def _parse_header(read, name):
    """Read the magic number and dimensions through ``read(n)``; return (dtype, shape, header bytes)."""
    magic = read(4)
    if len(magic) < 4:
        raise IDXError(f"{name}: truncated header: {len(magic)} bytes, but an IDX magic number alone is 4 bytes")
    if magic[0] or magic[1]:
        raise IDXError(f"{name}: bad magic number 0x{bytes(magic).hex()}: an IDX file starts with two zero bytes "
                       f"(is this an IDX file?)")
    code, ndim = magic[2], magic[3]
    if code not in IDX_TYPES:
        raise IDXError(f"{name}: unsupported element type 0x{code:02X} (supported: {_TYPE_NAMES})")
    if ndim == 0:
        raise IDXError(f"{name}: bad magic number 0x{bytes(magic).hex()}: zero dimensions")
    dims = read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise IDXError(f"{name}: truncated header: {ndim} dimensions need {4 * ndim} bytes after the magic "
                       f"number, the file has {len(dims)}")
    return IDX_TYPES[code], struct.unpack(f">{ndim}I", dims), 4 + 4 * ndim


def _payload_error(name, shape, dtype, expected, actual):
    what = f"shape {tuple(shape)} of {dtype.name} needs {expected} payload bytes, found {actual}"
    if actual < expected:
        return IDXError(f"{name}: truncated by {expected - actual} bytes: {what}")
    return IDXError(f"{name}: {actual - expected} trailing bytes after the payload: {what}")


def _parse_raw(data, name):
    view = memoryview(data)
    pos = 0

    def read(n):
        nonlocal pos
        chunk = view[pos:pos + n]
        pos += len(chunk)
        return chunk

    dtype, shape, header = _parse_header(read, name)
    count = math.prod(shape)
    expected, actual = count * dtype.itemsize, len(view) - header
    if actual != expected:
        raise _payload_error(name, shape, dtype, expected, actual)
    return _to_native(np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape))


def _parse_gzip(data, name):
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as f:
            dtype, shape, _ = _parse_header(f.read, name)
            expected = math.prod(shape) * dtype.itemsize
            if expected > _MAX_DEFLATE_RATIO * len(data) + _CHUNK:
                raise _payload_error(name, shape, dtype, expected, _count_rest(f))
            array = np.empty(shape, dtype=dtype)
            got = _readinto_full(f, array.reshape(-1).view(np.uint8))
            extra = _count_rest(f)  # also makes gzip check the CRC and length of every member
            if got < expected or extra:
                raise _payload_error(name, shape, dtype, expected, got + extra)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise IDXError(f"{name}: corrupt gzip data: {exc}") from exc
    return _to_native(array)


def _readinto_full(f, buffer):
    """Fill ``buffer`` from ``f``; return the number of bytes read (fewer only at end of file)."""
    with memoryview(buffer) as view:
        got = 0
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    return got


def _count_rest(f):
    total = 0
    while chunk := f.read(_CHUNK):
        total += len(chunk)
    return total


def _to_native(array):
    """Big-endian array -> native byte order, in place when the buffer is writable."""
    if array.dtype.isnative:
        return array
    native = array.dtype.newbyteorder("=")
    if not array.flags.writeable:
        return array.astype(native)
    array.byteswap(inplace=True)
    return array.view(native)
