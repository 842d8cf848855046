"""Downloading a file safely: mirrors, retries, a progress bar and a SHA-256 check.

The bytes go to a temporary file beside the destination and are renamed onto
it (``os.replace``) only when the download is complete and its SHA-256 is one
of the accepted ones, so an interrupted or corrupted download never leaves a
file that looks valid. Standard library only (``urllib``), plus tqdm.
"""
import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..progress import progress_bar

#: Defaults, read at call time (tests make them tiny).
DEFAULT_RETRIES = 2        # further attempts per mirror after the first, on transient failures
DEFAULT_BACKOFF = 1.0      # seconds before the first retry, doubled for each later one
DEFAULT_TIMEOUT = 30.0     # seconds, for connecting and for each read

USER_AGENT = "npcnn-data/0.1 (Python urllib)"
_CHUNK = 1 << 16


class DownloadError(OSError):
    """No mirror gave a complete, verified file.

    Attributes
    ----------
    attempts : list of (str, str)
        Every URL tried, with why it failed, in order.
    """

    def __init__(self, message, attempts=()):
        super().__init__(message)
        self.attempts = list(attempts)

    def __str__(self):
        return self.args[0]


class _Permanent(Exception):
    """A failure that retrying the same URL will not fix (wrong checksum, 404, ...)."""


def sha256_file(path):
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download_file(urls, dest, sha256, *, retries=None, backoff=None, timeout=None, progress=True):
    """Download ``dest`` from the first URL that gives a complete file with the right SHA-256.

    Parameters
    ----------
    urls : str or sequence of str
        The URLs to try, in order (mirrors of the same file).
    dest : str or os.PathLike
        Where the file goes; its folder is created if needed. An existing file
        there is replaced only by a complete, verified download.
    sha256 : str or sequence of str
        The accepted hex SHA-256 digest(s) of the file.
    retries : int, optional
        Further attempts per URL after a transient failure (connection error,
        timeout, short read, HTTP 5xx / 408 / 429). A wrong checksum or another
        HTTP error moves straight to the next URL. Default ``DEFAULT_RETRIES``.
    backoff : float, optional
        Seconds before the first retry, doubled for each later one.
        Default ``DEFAULT_BACKOFF``.
    timeout : float, optional
        Socket timeout in seconds. Default ``DEFAULT_TIMEOUT``.
    progress : bool
        Show a tqdm progress bar (bytes, sized from Content-Length).

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    DownloadError
        Every URL failed; the message lists each URL with its failure.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    accepted = {sha256.lower()} if isinstance(sha256, str) else {s.lower() for s in sha256}
    if not urls:
        raise ValueError("download_file: no URL given")
    if not accepted:
        raise ValueError("download_file: no SHA-256 given; every download must be verified")
    retries = DEFAULT_RETRIES if retries is None else int(retries)
    backoff = DEFAULT_BACKOFF if backoff is None else float(backoff)
    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)

    attempts = []
    for url in urls:
        for attempt in range(1, retries + 2):
            try:
                _fetch(url, dest, accepted, timeout, progress)
                return dest
            except _Permanent as exc:
                attempts.append((url, str(exc)))
                break
            except (OSError, http.client.HTTPException) as exc:
                attempts.append((url, f"attempt {attempt}: {_describe(exc)}"))
                if attempt <= retries:
                    time.sleep(backoff * 2 ** (attempt - 1))
    tried = "\n".join(f"  - {url}: {why}" for url, why in attempts)
    raise DownloadError(
        f"could not download {dest.name}: every URL failed:\n{tried}\n"
        f"To supply it by hand, fetch it from any of these URLs and save it as {dest}.", attempts)


def _describe(exc):
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def _fetch(url, dest, accepted, timeout, progress):
    """One attempt: stream ``url`` into a temporary file, verify, rename onto ``dest``."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    done = False
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": USER_AGENT}),
                                                  timeout=timeout)
            except urllib.error.HTTPError as exc:
                if exc.code >= 500 or exc.code in (408, 429):
                    raise
                raise _Permanent(f"HTTP {exc.code} {exc.reason}") from exc
            except ValueError as exc:  # not a URL urllib can open
                raise _Permanent(str(exc)) from exc
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.strip().isdigit() else None
                digest, got = hashlib.sha256(), 0
                with progress_bar(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                          disable=not progress, leave=False) as bar:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        got += len(chunk)
                        bar.update(len(chunk))
            if total is not None and got < total:
                raise ConnectionError(f"short read: the connection closed after {got} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        found = digest.hexdigest()
        if found not in accepted:
            raise _Permanent(f"SHA-256 mismatch: got {found}, expected {' or '.join(sorted(accepted))} "
                             f"({got} bytes received)")
        os.replace(tmp, dest)
        done = True
    finally:
        if not done:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
