"""A drawn digit, turned into a 28 x 28 image the way MNIST's digits were made.

The page sends the pen's path, not pixels: a list of strokes, each a list of ``[x, y]`` points in canvas
units (the canvas is :data:`CANVAS` x :data:`CANVAS`, origin top left). Two steps, both plain NumPy, so
both can be tested and the page shows exactly the image the net receives:

1. :func:`rasterize`: each stroke is drawn at the canvas's resolution with a round pen of radius
   :data:`BRUSH` / 2 (what the browser's ``lineCap = lineJoin = "round"`` draws). The ink of pixel
   ``(i, j)`` (centre ``(j + 0.5, i + 0.5)``) is ``clip(r + 0.5 - d, 0, 1)`` with ``d`` the distance of
   that centre to the nearest segment: 1 inside the pen, 0 outside, a one-pixel anti-aliased edge.
2. :func:`to_mnist`: LeCun, Cortes and Burges' recipe. The ink's bounding box, padded to a square (the
   aspect ratio kept), is averaged down to 20 x 20 (each output pixel the mean of the canvas area it
   covers: anti-aliasing by area, which gives the grey edges MNIST has), placed in a 28 x 28 frame, and
   moved by whole pixels so that its centre of mass sits at the frame's centre (13.5, 13.5), as far as
   the frame allows.

A blank drawing gives a black image. Pixels are in [0, 1], 0 = black background, 1 = ink.
"""
import numpy as np

CANVAS = 280     # the drawing surface, in canvas units (= CSS pixels on the page)
BRUSH = 20       # the pen's width, in canvas units (a 200-unit digit gets ~2-pixel strokes at 28 x 28)
SIZE = 28        # the image the net sees
BOX = 20         # MNIST's box for the digit itself


def rasterize(strokes, size=CANVAS, width=BRUSH):
    """Ink [size, size] in [0, 1] (float64) of ``strokes`` drawn with a round pen ``width`` units wide.

    ``strokes``: a sequence of strokes, each an array-like [K, 2] of (x, y) points; one point is a dot.
    Each segment only touches the pixels near it, so the cost grows with the ink, not the canvas.
    """
    ink = np.zeros((size, size), dtype=np.float64)
    r = width / 2.0
    for stroke in strokes:
        pts = np.asarray(stroke, dtype=np.float64).reshape(-1, 2)
        if len(pts) == 0:
            continue
        if len(pts) == 1:
            pts = np.concatenate([pts, pts])
        for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
            _segment(ink, x0, y0, x1, y1, r)
    return ink


def _segment(ink, x0, y0, x1, y1, r):
    """Max the coverage of the segment (x0, y0)-(x1, y1) with pen radius ``r`` into ``ink``, in place."""
    size = ink.shape[0]
    c0 = max(int(np.floor(min(x0, x1) - r - 1)), 0)
    c1 = min(int(np.ceil(max(x0, x1) + r + 1)), size)
    r0 = max(int(np.floor(min(y0, y1) - r - 1)), 0)
    r1 = min(int(np.ceil(max(y0, y1) + r + 1)), size)
    if c0 >= c1 or r0 >= r1:
        return
    px = np.arange(c0, c1, dtype=np.float64)[None, :] + 0.5
    py = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    if length2 > 0:   # the closest point of the segment: the projection, clamped to its ends
        t = np.clip(((px - x0) * dx + (py - y0) * dy) / length2, 0.0, 1.0)
    else:
        t = 0.0
    d = np.hypot(px - (x0 + t * dx), py - (y0 + t * dy))
    cover = np.clip(r + 0.5 - d, 0.0, 1.0)
    np.maximum(ink[r0:r1, c0:c1], cover, out=ink[r0:r1, c0:c1])


def area_matrix(n_in, n_out):
    """The [n_out, n_in] matrix that resamples a line of ``n_in`` pixels to ``n_out`` by area: output pixel
    k is the mean of the input over ``[k s, (k + 1) s)`` with ``s = n_in / n_out`` (pixels cut by an edge
    count with the part inside). Rows sum to 1; works for enlarging too."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    lo, hi = edges[:-1, None], edges[1:, None]
    i = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, i + 1) - np.maximum(lo, i), 0.0, None)
    return overlap / (n_in / n_out)


def center_of_mass(image):
    """(row, column) of the ink's centre of mass, pixel centres at integer indices; None for a blank image."""
    total = image.sum()
    if total <= 0:
        return None
    rows, cols = np.indices(image.shape)
    return float((rows * image).sum() / total), float((cols * image).sum() / total)


def to_mnist(ink, size=SIZE, box=BOX):
    """MNIST-style [size, size] float32 image in [0, 1] from ink [H, W] of any size (see the module doc)."""
    ink = np.asarray(ink, dtype=np.float64)
    out = np.zeros((size, size), dtype=np.float64)
    rows, cols = np.nonzero(ink > 0)
    if len(rows) == 0:
        return out.astype(np.float32)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = max(r1 - r0, c1 - c0)
    square = np.zeros((side, side), dtype=np.float64)        # the bounding box, centred in a square
    top, left = (side - (r1 - r0)) // 2, (side - (c1 - c0)) // 2
    square[top:top + r1 - r0, left:left + c1 - c0] = ink[r0:r1, c0:c1]
    a = area_matrix(side, box)
    digit = np.clip(a @ square @ a.T, 0.0, 1.0)               # [box, box]
    cy, cx = center_of_mass(digit)
    centre = (size - 1) / 2.0
    # whole-pixel shift of the box's top-left corner, the box kept inside the frame
    y = int(np.clip(np.round(centre - cy), 0, size - box))
    x = int(np.clip(np.round(centre - cx), 0, size - box))
    out[y:y + box, x:x + box] = digit
    return out.astype(np.float32)


def strokes_to_image(strokes, canvas=CANVAS, width=BRUSH):
    """The 28 x 28 image the net sees for a drawing: :func:`to_mnist` of :func:`rasterize`."""
    return to_mnist(rasterize(strokes, canvas, width))
