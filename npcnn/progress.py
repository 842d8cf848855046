"""Progress bars: tqdm, redrawn rarely when nobody is watching.

On a terminal a bar redraws as tqdm likes. Written to a log or a pipe (``npcnn reproduce > log``),
every redraw would be one more line in the file, so there a bar updates at most every
``LOG_INTERVAL`` seconds.
"""
import sys

from tqdm.auto import tqdm

#: Seconds between two updates of a bar whose stream is not a terminal.
LOG_INTERVAL = 30.0


def progress_bar(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)``; when stderr is not a terminal, at most one update per LOG_INTERVAL."""
    stream = kwargs.get("file") or sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        kwargs["mininterval"] = max(float(kwargs.get("mininterval", 0.1)), LOG_INTERVAL)
        kwargs.setdefault("miniters", 1)
    return tqdm(iterable, **kwargs)
