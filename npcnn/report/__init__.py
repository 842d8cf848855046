"""A run's results as one self-contained HTML page.

:func:`write_report` reads what a directory holds (one run folder, or a
``npcnn reproduce`` directory with the ``plain/`` and ``batchnorm/`` runs)
and writes ``report.html``: figures embedded as base64 PNG, styles inline,
no script, no font or file from elsewhere, so it opens from disk with no
network. Every number on the page is read from the run's files; a stage that
has not been run is shown as "not run" with the command that runs it.
"""
import os

from ..io import atomic_path, read_json
from ..runs import FORMAT
from .attacks import section_attacks, sweep_sentence
from .beyond import section_beyond, speed_rows
from .deeper import section_deeper
from .defense import section_defense
from .inside import section_inside
from .page import STYLE, VARIANT_TITLES, esc
from .training import section_setup, section_training

__all__ = ["ReportError", "find_runs", "build_report", "write_report", "sweep_sentence", "speed_rows"]


class ReportError(ValueError):
    """The directory is not something a report can be made from."""


# ----------------------------------------------------------------------------- finding the runs


def find_runs(directory):
    """The run folders of ``directory``: {variant name: path}. A clear error for foreign or old folders."""
    if not os.path.isdir(directory):
        raise ReportError(f"{directory}: no such directory")
    candidates = {}
    if os.path.isfile(os.path.join(directory, "config.json")):
        config = read_json(os.path.join(directory, "config.json"))
        name = "adversarial" if config.get("adversarial") else "batchnorm" if config.get("batchnorm") else "plain"
        candidates[name] = directory
    else:
        for name in VARIANT_TITLES:
            if os.path.isfile(os.path.join(directory, name, "config.json")):
                candidates[name] = os.path.join(directory, name)
    if not candidates:
        raise ReportError(f"{directory}: no npcnn run here (expected config.json, or plain/ and batchnorm/ "
                          f"run folders from `npcnn reproduce`)")
    for name, path in candidates.items():
        version = read_json(os.path.join(path, "config.json")).get("format")
        if version != FORMAT:
            raise ReportError(f"{path}: run folder format {version!r}, this npcnn reads format {FORMAT}; "
                              f"rerun `npcnn reproduce` or `npcnn train` to regenerate it")
    return candidates


def build_report(directory):
    """The report of ``directory`` as an HTML string."""
    runs = find_runs(directory)
    first = read_json(os.path.join(next(iter(runs.values())), "config.json"))
    dataset = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}.get(first.get("dataset"), first.get("dataset"))
    body = [
        f"<h1>npcnn report: a CNN on {esc(dataset)}, trained, inspected and fooled</h1>",
        "<nav><a href='#setup'>setup</a><a href='#training'>training</a><a href='#inside'>looking inside</a>"
        "<a href='#deeper'>looking deeper</a>"
        "<a href='#attacks'>adversarial examples</a><a href='#defense'>defending the net</a>"
        "<a href='#beyond'>beyond the report</a></nav>",
        section_setup(runs),
        section_training(directory, runs),
        section_inside(runs),
        section_deeper(runs),
        section_attacks(runs),
        section_defense(runs),
        section_beyond(directory, runs),
    ]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>npcnn report: {esc(dataset)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(directory, out=None):
    """Write ``report.html`` (atomically) into ``directory`` or to ``out``; return its path."""
    page = build_report(directory)
    out = out or os.path.join(directory, "report.html")
    with atomic_path(out, ".html") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(page)
    return out
