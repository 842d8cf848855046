"""Looking deeper: the net's view of the whole test set, how much it needs each conv channel, and what each
channel responds to most (issue 18).

Three stages, each on the first ``limit`` test images (default: all of them):

* :func:`embedding`         the 500 fc1 units (after their ReLU) of every image mapped to 2-D by t-SNE or PCA,
                            coloured by class, misclassified digits marked; the 5-NN accuracy in the map;
* :func:`ablation`          every output channel of a conv layer set to zero in turn (Captum's
                            LayerFeatureAblation, baseline 0): accuracy drop overall and per class;
* :func:`dataset_examples`  each channel's ``k`` strongest (image, position) pairs and the input patch of
                            their receptive field (Zeiler & Fergus).

All write into ``RUN_DIR/deeper/``, each file atomically, the figure first and the ``.npz`` last::

    RUN_DIR/deeper/  embedding_<method>.png/.npz, ablation_<layer>.png/.npz, top_<layer>.png/.npz

Every setting is checked before anything is computed or written.
"""
import time
from dataclasses import dataclass

import numpy as np

from ..analysis.channels import channel_ablation, top_activations
from ..analysis.embedding import TSNE, as_pixels, check_method, embed, knn_accuracy, penultimate
from ..analysis.features import layer_name
from ..plots import deeper as plots
from .common import StageOutput, Writer, open_run

FOLDER = "deeper"
METHOD_NAMES = {"tsne": "t-SNE", "pca": "PCA"}
KNN = 5                 # neighbours voting in the map
EMBED_MIN_IMAGES = 50   # t-SNE needs more points than its perplexity (30), the 5-NN score more than 5
MAX_K = 100


def _integer(value, name, low, high):
    """``value`` as an int in low..high, or a one-line ValueError naming the setting and the range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"--{name} must be an integer in {low}..{high}, got {value!r}")
    return int(value)


def _check_limit(limit, minimum):
    """``limit``: None (the whole test set) or an integer >= ``minimum`` (its upper end: :func:`_test_set`)."""
    if limit is not None and (isinstance(limit, (bool, np.bool_)) or not isinstance(limit, (int, np.integer))
                              or limit < minimum):
        raise ValueError(f"--limit must be an integer >= {minimum} (or none: the whole test set), got {limit!r}")


def _test_set(run, limit, minimum):
    """The first ``limit`` test images (uint8) and labels, ``limit`` checked against the test set's size."""
    images, labels = run.test_data()
    if limit is not None:
        _integer(limit, "limit", minimum, len(labels))
        images, labels = images[:limit], labels[:limit]
    elif len(labels) < minimum:
        raise ValueError(f"the test set has {len(labels)} images; this stage needs at least {minimum}")
    return images, labels.astype(np.int64)


def _check_layer(run, layer):
    """The conv layer's name ("last" resolved: conv2 in the reference net, block3 in small-resnet); an unknown
    layer is a ValueError naming the choices."""
    return layer_name(run.classifier, layer)


# --------------------------------------------------------------------------- embedding

@dataclass
class EmbeddingOutput(StageOutput):
    method: str = "tsne"
    points: np.ndarray = None      # [N, 2]
    labels: np.ndarray = None      # [N]
    predicted: np.ndarray = None   # [N]
    knn_accuracy: float = 0.0      # leave-one-out 5-NN accuracy in the map
    seconds: float = 0.0           # time of the embedding itself (t-SNE / PCA)

    def describe(self):
        wrong = int((self.labels != self.predicted).sum())
        return (f"{METHOD_NAMES[self.method]} of the last hidden layer of {len(self.labels):,} test images "
                f"({self.seconds:.1f} s): {KNN}-NN accuracy in the map {self.knn_accuracy:.2%}, {wrong} "
                f"misclassified marked; written to {self.folder}")


def embedding(run, *, method="tsne", limit=None, seed=0, progress=True):
    """Map the last hidden layer (the input of the last Linear: 500 fc1 units after ReLU) of the first
    ``limit`` test images to 2-D with ``method`` ("tsne": perplexity 30, PCA initialisation, 1,000
    iterations, ``random_state=seed``; "pca": the first two principal components). Writes
    ``embedding_<method>.png`` and ``.npz``. Returns an :class:`EmbeddingOutput`."""
    check_method(method)
    seed = _integer(seed, "seed", 0, 2 ** 32 - 1)
    _check_limit(limit, EMBED_MIN_IMAGES)
    run = open_run(run)
    images, labels = _test_set(run, limit, EMBED_MIN_IMAGES)
    clf = run.classifier
    features = penultimate(clf, images, progress=progress)
    predicted = clf.predict(as_pixels(images, clf.dtype))
    start = time.perf_counter()
    points = embed(features, method, seed=seed)
    seconds = time.perf_counter() - start
    knn = knn_accuracy(points, labels, k=KNN)
    names = clf.class_names
    out = Writer(run.file(FOLDER))
    out.figure(plots.embedding(points, labels, predicted, names, images=images, method=METHOD_NAMES[method],
                               knn=knn), f"embedding_{method}.png")
    out.npz(f"embedding_{method}.npz", {
        "points": points, "labels": labels, "predicted": predicted, "indices": np.arange(len(labels)),
        "method": method, "seed": seed, "limit": -1 if limit is None else limit, "knn_accuracy": knn,
        "knn_k": KNN, "perplexity": TSNE["perplexity"], "max_iter": TSNE["max_iter"], "seconds": seconds,
        "features": features.shape[1], "class_names": np.array(names)})
    return EmbeddingOutput(folder=out.final, files=out.files, method=method, points=points, labels=labels,
                           predicted=predicted, knn_accuracy=knn, seconds=seconds)


# --------------------------------------------------------------------------- ablation

@dataclass
class AblationOutput(StageOutput):
    ablation: object = None   # npcnn.analysis.channels.AblationResult: drop [C], class_drop [C, classes], ...
    images: int = 0

    def describe(self):
        r = self.ablation
        top = r.ranking()[:3]
        lines = ", ".join(f"channel {r.channels[i]}: {100 * r.drop[i]:+.2f} points" for i in top)
        return (f"{r.layer} ablation on {self.images:,} test images (accuracy {r.base_accuracy:.2%} with all "
                f"{len(r.channels)} channels); largest drops: {lines}; written to {self.folder}")


def ablation(run, *, layer="last", limit=None, progress=True):
    """Set each output channel of conv ``layer`` to zero in turn, for the first ``limit`` test images:
    accuracy drop overall (bars, sorted) and per class (heatmap), and the true-class logit's change per
    image and channel (Captum's LayerFeatureAblation attribution). Writes ``ablation_<layer>.png`` and
    ``.npz``. Returns an :class:`AblationOutput`."""
    _check_limit(limit, 1)
    run = open_run(run)
    layer = _check_layer(run, layer)
    images, labels = _test_set(run, limit, 1)
    clf = run.classifier
    r = channel_ablation(clf, images, labels, layer=layer, progress=progress)
    names = clf.class_names
    out = Writer(run.file(FOLDER))
    out.figure(plots.ablation(r.drop, r.class_drop, r.channels, names, base_accuracy=r.base_accuracy, layer=layer,
                              num_images=len(labels)), f"ablation_{layer}.png")
    out.npz(f"ablation_{layer}.npz", {
        "layer": layer, "channels": r.channels, "drop": r.drop, "class_drop": r.class_drop,
        "accuracy": r.accuracy, "class_accuracy": r.class_accuracy, "base_accuracy": r.base_accuracy,
        "base_class_accuracy": r.base_class_accuracy, "counts": r.counts, "labels": labels,
        "logit_change": r.logit_change, "base_logit": r.base_logit, "ranking": r.channels[r.ranking()],
        "limit": -1 if limit is None else limit, "class_names": np.array(names)})
    return AblationOutput(folder=out.final, files=out.files, ablation=r, images=len(labels))


# --------------------------------------------------------------------------- dataset examples

@dataclass
class DatasetExamplesOutput(StageOutput):
    top: object = None   # npcnn.analysis.channels.TopActivations: indices, positions, values, patches, boxes
    images: int = 0

    def describe(self):
        t = self.top
        c, k = t.values.shape
        strongest = int(np.argmax(t.values[:, 0]))
        dead = int((t.values[:, 0] <= 0).sum())
        size = t.receptive_field["size"]
        return (f"{t.layer}: the {k} strongest (image, position) pairs of {self.images:,} test images for each of "
                f"{c} channels (receptive field {size[0]}x{size[1]} px); strongest {t.values[strongest, 0]:.3g} "
                f"(channel {strongest}), channels never active: {dead}; written to {self.folder}")


def dataset_examples(run, *, layer="last", k=9, limit=None, progress=True):
    """For each channel of conv ``layer``, the ``k`` (image, position) pairs of the first ``limit`` test
    images with the largest activation after the conv's ReLU, and the input patch of each position's
    receptive field. Writes ``top_<layer>.png`` and ``.npz``. Returns a :class:`DatasetExamplesOutput`."""
    k = _integer(k, "k", 1, MAX_K)
    _check_limit(limit, 1)
    run = open_run(run)
    layer = _check_layer(run, layer)
    images, _ = _test_set(run, limit, 1)
    t = top_activations(run.classifier, images, layer=layer, k=k, progress=progress)
    out = Writer(run.file(FOLDER))
    out.figure(plots.top_activations(t.patches, t.values, layer=layer, receptive_field=t.receptive_field),
               f"top_{layer}.png")
    rf = t.receptive_field
    out.npz(f"top_{layer}.npz", {
        "layer": layer, "k": k, "indices": t.indices, "positions": t.positions, "values": t.values,
        "patches": t.patches, "boxes": t.boxes, "rf_size": np.array(rf["size"]),
        "rf_stride": np.array(rf["stride"]), "rf_offset": np.array(rf["offset"]),
        "limit": -1 if limit is None else limit})
    return DatasetExamplesOutput(folder=out.final, files=out.files, top=t, images=len(images))


# --------------------------------------------------------------------------- channel visualisation

@dataclass
class ChannelImagesOutput(StageOutput):
    result: object = None          # npcnn.analysis.channel_images.ChannelImages

    def describe(self):
        r = self.result
        above = int(np.sum(r.ratio > 1))
        return (f"{r.layer}: the input each of {len(r.channels)} channels likes best ({r.settings['steps']} Adam "
                f"steps); {above}/{len(r.channels)} drive their channel harder than every test image (ratio "
                f"{np.nanmin(r.ratio):.2f} .. {np.nanmax(r.ratio):.2f}); written to {self.folder}")


def channel_images(run, *, layer="last", steps=None, seed=0, progress=True):
    """For each channel of conv ``layer``, the input in [0, 1] that maximises its mean activation after the
    ReLU (:func:`npcnn.analysis.channel_images.visualize_channels`), and how much harder it drives the channel
    than the channel's best test image. Writes ``channels_<layer>.png`` and ``.npz``."""
    from ..analysis.channel_images import CHANNEL, visualize_channels

    steps = CHANNEL["steps"] if steps is None else _integer(steps, "steps", 1, 100_000)
    seed = _integer(seed, "seed", 0, 2**32 - 1)
    run = open_run(run)
    layer = _check_layer(run, layer)
    images, _ = _test_set(run, None, 1)
    r = visualize_channels(run.classifier, layer, test_images=images, seed=seed, steps=steps, progress=progress)
    out = Writer(run.file(FOLDER))
    out.figure(plots.channel_images(r.images, r.channels, r.ratio, r.layer), f"channels_{layer}.png")
    out.npz(f"channels_{layer}.npz", {
        "layer": layer, "layer_described": r.layer, "channels": r.channels, "images": r.images,
        "activation": r.activation, "best_test": r.best_test, "ratio": r.ratio, "cost": r.history,
        "steps": steps, "seed": seed, "lr": r.settings["lr"], "blur_sigma": r.settings["blur_sigma"],
        "jitter": r.settings["jitter"]})
    return ChannelImagesOutput(folder=out.final, files=out.files, result=r)
