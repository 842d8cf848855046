"""The explorer's JSON API as plain functions: every request checked, then computed with the library.

:class:`Explorer` holds one run folder's classifier (read once; the folder is never written) and answers
requests given as the decoded JSON body (a dict) with a dict to send back. A bad request raises
:class:`ApiError`, whose message names the problem (the server turns it into a 4xx JSON reply). Nothing
from a request is ever used as a file path: images arrive as numbers, test images are picked by index.

``POST /api/analyze``  ``{"image": 28 x 28 in [0, 1] | "strokes": [[[x, y], ...], ...], "target": class or
null, "encoding": "lists" | "base64"}`` -> the probabilities, the prediction, and per layer its output
and the gradient of the target's logit with respect to it (:func:`npcnn.explore.trace.trace`).
``POST /api/pixel``    one conv output pixel explained, forward and backward (:func:`.trace.conv_pixel`).
``POST /api/overlay``  occlusion, saliency or Grad-CAM of the image for the target class, as a 28 x 28 map.
``POST /api/attack``   the library's targeted attack (:func:`npcnn.analysis.attacks.targeted`) toward
``"target"``, pixels kept in [0, 1]: the adversarial image, the perturbation, the new probabilities.
``GET /api/sample?source=samples|test&index=N``  a test image, by index into the run's chosen digits or
into its test set.

The computations share the net's layers (they cache their forward passes), so one lock serialises them;
and they run with BLAS and OpenMP held to one thread (threadpoolctl): one image's work is too small to
share, and spinning BLAS threads made a 300-step attack up to 10x slower on a busy 2-core machine
(0.6 s against 6.6 s, measured side by side).
"""
import base64
import contextlib
import os
import threading

import numpy as np
from threadpoolctl import ThreadpoolController

from ..analysis import grad_cam, occlusion, saliency
from ..analysis.attacks import targeted
from ..analysis.features import conv_layers
from ..runs import Run
from .drawing import BRUSH, CANVAS, SIZE, strokes_to_image
from .trace import conv_pixel, layer_names, trace

MAX_BODY = 1 << 20          # bytes: larger request bodies are refused (413)
MAX_POINTS = 20_000         # pen points in one drawing
#: the attack's settings: Adam steps of lr in the normalised space, penalty beta ||z - z0||^2, pixels in [0, 1].
#: On a net trained 1 epoch (97.6 %), its 10 sample digits each pushed to (label + 3) % 10: all 10 fooled
#: (median p 1.00, L2 5.3, largest pixel change 0.65); lr 0.01 also fools all but with twice the L2,
#: lr 0.003 leaves one unfooled.
ATTACK = {"steps": 300, "lr": 0.005, "beta": 1e-2, "bounds": (0.0, 1.0)}
OCCLUSION = {"patch": 6, "stride": 2, "fill": 0.0}
OVERLAYS = ("occlusion", "saliency", "grad_cam")
ENCODINGS = ("lists", "base64")


class ApiError(ValueError):
    """A request the API refuses: ``status`` (4xx) and a message naming the problem."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def encode(array, encoding):
    """An array for JSON: nested lists (exact float32 values as numbers), or base64 of its float32
    little-endian bytes in C order (what the page decodes into a Float32Array; ~40x faster to make)."""
    a = np.asarray(array, dtype="<f4")
    if encoding == "base64":
        return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")
    return a.tolist()


class Explorer:
    """The API over one run folder: ``Explorer(run_dir).analyze({"image": ...})`` and so on."""

    def __init__(self, run_dir):
        self.run = Run.open(run_dir)
        self.classifier = self.run.classifier
        self.names = layer_names(self.classifier)
        self.lock = threading.Lock()
        self._test = None
        self._pools = None
        with self.computing():
            t = trace(self.classifier, np.zeros((SIZE, SIZE), dtype=np.float32))   # shapes, and warms up
        self.shapes = [list(a.shape) for a in t.activations]
        self._pools = ThreadpoolController()       # after the first pass: BLAS and numba's pools are loaded

    @contextlib.contextmanager
    def computing(self):
        """One request at a time through the net, BLAS and OpenMP on one thread (see the module doc)."""
        with self.lock:
            if self._pools is None:
                yield
                return
            with self._pools.limit(limits=1):
                yield

    @property
    def num_classes(self):
        return self.classifier.num_classes

    # ------------------------------------------------------------------ requests
    def info(self):
        """What the page needs before the first request: classes, layers, canvas, settings."""
        layers = []
        for i, (name, shape, layer) in enumerate(zip(self.names, self.shapes, self.classifier.body)):
            entry = {"index": i, "name": name, "type": type(layer).__name__, "shape": shape}
            if hasattr(layer, "kernel_size"):
                entry["kernel_size"] = list(layer.kernel_size)
            layers.append(entry)
        try:
            samples = len(self.run.sample_indices())
        except ValueError:
            samples = 0
        return {"run": os.path.basename(os.path.abspath(self.run.path)), "classes": self.class_names(),
                "image_size": [SIZE, SIZE], "canvas": CANVAS, "brush": BRUSH, "layers": layers,
                "samples": samples, "attack": {k: v for k, v in ATTACK.items() if k != "bounds"},
                "overlays": list(OVERLAYS), "max_body": MAX_BODY}

    def analyze(self, body):
        body = _fields(body, {"image", "strokes", "target", "encoding"})
        image, target, enc = self._image(body), self._class(body, "target"), _encoding(body)
        with self.computing():
            t = trace(self.classifier, image, target)
        return {"image": encode(t.image, "lists"), "probabilities": t.probabilities.astype(float).tolist(),
                "prediction": t.prediction, "target": t.target, "encoding": enc,
                "layers": [{"index": i, "name": self.names[i], "shape": list(a.shape),
                            "activation": encode(a, enc), "gradient": encode(g, enc)}
                           for i, (a, g) in enumerate(zip(t.activations, t.gradients))],
                "input_gradient": encode(t.input_gradient, enc)}

    def pixel(self, body):
        body = _fields(body, {"image", "strokes", "target", "layer", "channel", "row", "col"})
        image, target = self._image(body), self._class(body, "target")
        index = self._conv_layer(body.get("layer"))
        c, h, w = self.shapes[index]
        channel, row, col = (_int(body, k, hi) for k, hi in (("channel", c), ("row", h), ("col", w)))
        with self.computing():
            t = trace(self.classifier, image, target)
            p = conv_pixel(self.classifier, t, index, channel, row, col)
        p["target"] = t.target
        return _jsonable(p)

    def overlay(self, body):
        body = _fields(body, {"image", "strokes", "target", "method"})
        image, target = self._image(body), self._class(body, "target")
        method = body.get("method")
        if method not in OVERLAYS:
            raise ApiError(f"unknown method {method!r}: choose one of {', '.join(OVERLAYS)}")
        x = image[None]
        with self.computing():
            if target is None:
                target = int(self.classifier.predict(x)[0])
            if method == "occlusion":
                r = occlusion(self.classifier, x, target, **OCCLUSION)
                m, signed = r.attribution[0], True
                note = (f"drop in p({target}) when a {OCCLUSION['patch']}x{OCCLUSION['patch']} black patch covers "
                        f"each pixel (mean over the patches covering it)")
            elif method == "saliency":
                m, signed = saliency(self.classifier, x, target, absolute=True)[0], False
                note = f"|d logit_{target} / d pixel|"
            else:
                layer = list(conv_layers(self.classifier))[-1]
                g = grad_cam(self.classifier, x, target, layer=layer)
                m, signed, note = g.upsampled[0], False, f"Grad-CAM at {g.layer}, upsampled"
        return {"method": method, "target": int(target), "map": encode(m, "lists"), "signed": signed,
                "note": note}

    def attack(self, body):
        body = _fields(body, {"image", "strokes", "target", "steps"})
        image = self._image(body)
        target = self._class(body, "target", required=True)
        steps = _int(body, "steps", 2001, default=ATTACK["steps"], lo=1)
        with self.computing():
            r = targeted(self.classifier, image[None], [target], steps=steps, lr=ATTACK["lr"], beta=ATTACK["beta"],
                         bounds=ATTACK["bounds"], progress=False)
        p = r.probabilities[0]
        d = r.perturbation[0].astype(np.float64)
        return {"image": encode(r.images[0], "lists"), "perturbation": encode(r.perturbation[0], "lists"),
                "probabilities": p.astype(float).tolist(), "prediction": int(np.argmax(p)), "target": target,
                "success": bool(r.success[0]), "steps": steps, "lr": ATTACK["lr"], "beta": ATTACK["beta"],
                "linf": float(np.abs(d).max()), "l2": float(np.sqrt((d * d).sum())),
                "history": r.history[:, 0].tolist()}

    def sample(self, source, index):
        """A test image by index: ``source`` "samples" (the run's chosen digits) or "test" (its test set)."""
        if source not in ("samples", "test"):
            raise ApiError(f"unknown source {source!r}: use samples or test")
        try:
            index = int(index)
        except (TypeError, ValueError):
            raise ApiError(f"index must be a whole number, got {index!r}") from None
        try:
            chosen = self.run.sample_indices() if source == "samples" else None
        except ValueError as e:
            raise ApiError(str(e), 404) from None
        images, labels = self._test_set()
        n = len(chosen) if chosen is not None else len(labels)
        if not 0 <= index < n:
            raise ApiError(f"index {index} is out of range: {source} has {n} images (0..{n - 1})", 404)
        i = chosen[index] if chosen is not None else index
        if not 0 <= i < len(labels):
            raise ApiError(f"samples.json points at test image {i}, but the test set has {len(labels)}", 404)
        return {"source": source, "index": index, "test_index": int(i), "label": int(labels[i]),
                "count": n, "image": encode(images[i].astype(np.float32) / np.float32(255), "lists")}

    # ------------------------------------------------------------------ checks
    def class_names(self):
        names = self.classifier.class_names
        return list(names) if names else [str(c) for c in range(self.num_classes)]

    def _test_set(self):
        if self._test is None:
            try:
                self._test = self.run.test_data()
            except (OSError, ValueError) as e:
                raise ApiError(f"the run's test set cannot be read here: {e}", 404) from None
        return self._test

    def _image(self, body):
        if ("image" in body) == ("strokes" in body):
            raise ApiError("send either \"image\" (28 x 28 numbers in [0, 1]) or \"strokes\", not both or neither")
        if "strokes" in body:
            return strokes_to_image(_strokes(body["strokes"]))
        try:
            image = np.asarray(body["image"], dtype=np.float64)
        except (TypeError, ValueError):
            raise ApiError(f"image must be {SIZE} rows of {SIZE} numbers") from None
        if image.shape != (SIZE, SIZE):
            raise ApiError(f"image must be {SIZE} x {SIZE} ({SIZE} rows of {SIZE} numbers), got shape "
                           f"{list(image.shape)}")
        if not np.all(np.isfinite(image)):
            raise ApiError("image contains NaN, infinite or null values")
        if image.min() < 0 or image.max() > 1:
            raise ApiError(f"pixel values must be in [0, 1], got values from {image.min():g} to {image.max():g}")
        return image.astype(self.classifier.dtype)

    def _class(self, body, key, required=False):
        value = body.get(key)
        if value is None and not required:
            return None
        last = self.num_classes - 1
        if not isinstance(value, int) or isinstance(value, bool):
            raise ApiError(f"{key} must be a class number 0..{last}{'' if required else ' or null'}, got {value!r}")
        if not 0 <= value <= last:
            raise ApiError(f"unknown class {value} for {key}: the classes are 0..{last}")
        return value

    def _conv_layer(self, layer):
        convs = [i for i, m in enumerate(self.classifier.body) if type(m).__name__ == "Conv2d"]
        by_name = {self.names[i]: i for i in convs}
        if isinstance(layer, str) and layer in by_name:
            return by_name[layer]
        if isinstance(layer, int) and not isinstance(layer, bool) and layer in convs:
            return layer
        raise ApiError(f"layer must be a conv layer: one of {', '.join(by_name)} or index "
                       f"{', '.join(map(str, convs))}; got {layer!r}")


def _fields(body, allowed):
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(f"unknown field {unknown[0]!r}: expected {', '.join(sorted(allowed))}")
    return body


def _encoding(body):
    enc = body.get("encoding", "lists")
    if enc not in ENCODINGS:
        raise ApiError(f"unknown encoding {enc!r}: use lists or base64")
    return enc


def _int(body, key, hi, default=None, lo=0):
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value < hi:
        raise ApiError(f"{key} must be a whole number in {lo}..{hi - 1}, got {value!r}")
    return value


def _strokes(strokes):
    """The checked strokes: a list of [K, 2] arrays of finite canvas coordinates."""
    if not isinstance(strokes, list):
        raise ApiError("strokes must be a list of strokes, each a list of [x, y] points")
    out, total = [], 0
    for k, stroke in enumerate(strokes):
        try:
            pts = np.asarray(stroke, dtype=np.float64)
        except (TypeError, ValueError):
            raise ApiError(f"stroke {k} must be a list of [x, y] number pairs") from None
        if pts.size == 0:
            continue
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ApiError(f"stroke {k} must be a list of [x, y] number pairs, got shape {list(pts.shape)}")
        if not np.all(np.isfinite(pts)) or pts.min() < -CANVAS or pts.max() > 2 * CANVAS:
            raise ApiError(f"stroke {k} has points that are not finite or far outside the {CANVAS} x {CANVAS} canvas")
        total += len(pts)
        out.append(pts)
    if total > MAX_POINTS:
        raise ApiError(f"too many points: {total} (at most {MAX_POINTS})")
    return out


def _jsonable(value):
    """Arrays, tuples and numpy numbers in nested dicts and lists, as plain JSON values."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.astype(float).tolist() if value.dtype.kind == "f" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
