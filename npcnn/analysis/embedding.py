"""The net's view of a whole test set: its last hidden layer, mapped to 2-D.

The reference net ends ``... -> Linear(1568, 500) -> ReLU -> Linear(500, 10)``: the 500 fc1 units after
their ReLU are what the last (linear) layer separates the classes from. :func:`penultimate` returns them
for every image (batched), :func:`embed` maps them to a plane (t-SNE or PCA, scikit-learn), and
:func:`knn_accuracy` measures how well the classes stay apart in that plane::

    feats = penultimate(classifier, images)          # [N, 500]
    points = embed(feats, "tsne", seed=0)            # [N, 2]
    knn_accuracy(points, labels, k=5)                # 0.97: a digit's 5 nearest neighbours in the map vote
"""
import numpy as np

from .. import fast
from ..nn import Linear, Sequential
from .features import _model

METHODS = ("tsne", "pca")
#: The t-SNE settings (scikit-learn's defaults, written out): perplexity 30, early exaggeration 12,
#: learning rate "auto" (max(N / 12 / 4, 50)), 1,000 iterations, PCA initialisation, Barnes-Hut (angle 0.5).
TSNE = {"perplexity": 30.0, "early_exaggeration": 12.0, "learning_rate": "auto", "max_iter": 1000,
        "init": "pca", "method": "barnes_hut", "angle": 0.5, "metric": "euclidean"}


def as_pixels(images, dtype):
    """Pixel-space images in ``dtype``: uint8 [0, 255] is divided by 255, floats are taken as they are."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(dtype) / dtype.type(255)
    return images.astype(dtype, copy=False)


def last_linear(classifier):
    """Index of the last :class:`~npcnn.nn.Linear` in the classifier's Sequential (its output layer)."""
    layers = list(_model(classifier))
    found = [i for i, layer in enumerate(layers) if isinstance(layer, Linear)]
    if not found:
        raise ValueError("the model has no Linear layer: there is no last hidden layer to read")
    return found[-1]


def _batches(n, batch_size, progress, desc):
    starts = range(0, n, batch_size)
    if progress:
        from ..progress import progress_bar
        starts = progress_bar(starts, desc=desc, unit="batch", leave=False)
    return starts


def penultimate(classifier, images, batch_size=1000, progress=False):
    """The activations of the last hidden layer for every image: the input of the last Linear.

    ``images``: uint8 [N, H, W] (0..255) or pixel-space floats [N, H, W] / [N, 1, H, W] in [0, 1].
    The layers before the last Linear (found by walking the classifier's Sequential: for the reference
    net, everything up to and including fc1's ReLU) run on the fast path in batches of ``batch_size``,
    in eval mode. Returns [N, F] in the model's dtype (F = 500 for the reference net).
    """
    if not (isinstance(batch_size, (int, np.integer)) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    model = _model(classifier)
    head = fast.plan(Sequential(*model.layers[:last_linear(classifier)]))
    images = np.asarray(images)
    n = len(images)
    if n == 0:
        raise ValueError("penultimate: no images given")
    classifier.model.eval()
    out = None
    for i in _batches(n, batch_size, progress, "penultimate"):
        x = classifier._as_input(as_pixels(images[i:i + batch_size], classifier.dtype))
        h = head.forward(classifier.normalize(x)).reshape(len(x), -1)
        if out is None:
            out = np.empty((n, h.shape[1]), dtype=h.dtype)
        out[i:i + len(x)] = h
    return out


def check_method(method):
    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def embed(features, method="tsne", seed=0, perplexity=TSNE["perplexity"], max_iter=TSNE["max_iter"]):
    """A 2-D map of ``features`` [N, F]: one point [N, 2] per row, in float64.

    ``method="tsne"``: :class:`sklearn.manifold.TSNE` with the settings in :data:`TSNE` (perplexity 30,
    early exaggeration 12, learning rate "auto", 1,000 iterations, PCA initialisation, Barnes-Hut with
    angle 0.5, Euclidean distances), ``random_state=seed``: the same seed gives the same map. With the PCA
    initialisation the seed only reaches scikit-learn's randomized PCA solver, which it picks for fewer than
    10 points per feature (e.g. 2,000 x 500); for 10,000 x 500 every seed gives the same map. The neighbour
    search uses every core (``n_jobs=-1``; the map is the same). Needs N > perplexity; 76-80 s for
    10,000 x 500 on 2 idle cores (Intel Xeon; 92 s with the search on one), a few seconds for 2,000.
    ``method="pca"``: :class:`sklearn.decomposition.PCA`, the first two principal components
    (``random_state=seed``; exact for this size), signs fixed by scikit-learn's ``svd_flip``.
    """
    check_method(method)
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"embed: expected features of shape [N, F] with N >= 3, got {x.shape}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x).astype(np.float64)
    if not 0 < perplexity < len(x):
        raise ValueError(f"perplexity must be in (0, {len(x)}) for {len(x)} points, got {perplexity:g}")
    from sklearn.manifold import TSNE as _TSNE

    settings = dict(TSNE, perplexity=float(perplexity), max_iter=int(max_iter))
    return _TSNE(n_components=2, random_state=seed, n_jobs=-1, **settings).fit_transform(x).astype(np.float64)


def knn_accuracy(points, labels, k=5):
    """Leave-one-out k-nearest-neighbour accuracy in the map: the share of points whose ``k`` nearest other
    points (Euclidean) vote for their own label (a tied vote goes to the smallest label). 1.0 = classes
    apart; 1 / classes = mixed."""
    from sklearn.neighbors import NearestNeighbors

    points, labels = np.asarray(points, dtype=np.float64), np.asarray(labels)
    if not (isinstance(k, (int, np.integer)) and 0 < k < len(points)):
        raise ValueError(f"k must be an integer in 1..{len(points) - 1}, got {k}")
    _, nn = NearestNeighbors(n_neighbors=k).fit(points).kneighbors()   # each point's neighbours, itself excluded
    votes = labels[nn]
    classes = np.unique(labels)
    counts = (votes[:, :, None] == classes[None, None, :]).sum(axis=1)
    return float(np.mean(classes[counts.argmax(axis=1)] == labels))
