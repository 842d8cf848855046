"""The pieces every section of the report is built from: escaped text, tables, embedded figures.

Figures are embedded as base64 PNG and the style sheet is inline, so the page needs nothing from elsewhere.
"""
import base64
import glob
import html
import os

from ..io import load_npz, read_json

VARIANT_TITLES = {"plain": "without BatchNorm", "batchnorm": "with BatchNorm",
                  "adversarial": "adversarially trained"}


def read_json_if_any(path):
    """The JSON file's contents, or None when it does not exist."""
    return read_json(path) if os.path.isfile(path) else None


def esc(value):
    return html.escape(str(value))


def img(path, caption=None):
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    caption = caption if caption is not None else os.path.splitext(os.path.basename(path))[0].replace("_", " ")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def table(header, rows, cls=""):
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def not_run(what, command):
    return (f'<div class="notrun"><strong>not run:</strong> {esc(what)}. Run <code>{esc(command)}</code> '
            f"and then <code>npcnn report</code> again.</div>")


def pct(x):
    return f"{100 * float(x):.2f} %"


def pngs(folder, pattern="*.png"):
    return sorted(glob.glob(os.path.join(folder, pattern)))


def gallery(paths):
    return '<div class="gallery">' + "".join(img(p) for p in paths) + "</div>"


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:3px solid #345;padding-bottom:.2em}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#eef}td:first-child,th:first-child{text-align:left}
table.net td:nth-child(2){text-align:left;font-family:monospace}table.net th:nth-child(2){text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em;align-items:start}
figure{margin:0;max-width:100%}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.8em;color:#555;text-align:center}
.notrun{background:#fff4e0;border-left:4px solid #e90;padding:.5em 1em;margin:.6em 0}
code{background:#f3f3f3;padding:0 .3em}nav a{margin-right:1em}
"""


def beside(title, path, what, command):
    """A lesson shown beside the report's setting: its heading, and the data of ``path`` (an .npz), or None
    with the note that its stage has not run (and the command that runs it)."""
    head = f"<h4>Beside it: {title}</h4>"   # our own words, never user input
    if not os.path.isfile(path):
        return [head, not_run(what, command)], None
    return [head], load_npz(path)
