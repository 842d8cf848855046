"""The report's section 3, "inside the net": filters and feature maps, occlusion, saliency.

Each stage works on the run's chosen test images (``samples.json``: one per
class, the same digits everywhere; ``indices=`` picks others) and writes its
own folder, whole or not at all (:func:`~npcnn.experiments.common.output_folder`)::

    RUN_DIR/inspect/     conv1_filters.png, conv2_filters.png, conv{1,2}_maps_test<i>.png, feature_maps.npz
    RUN_DIR/occlusion/   occlusion_test<i>.png (one per image), attribution.png, occlusion.npz
    RUN_DIR/saliency/    saliency.png, saliency_test<i>.png, saliency.npz

Every setting is checked before anything is computed or written.
"""
from dataclasses import dataclass

import numpy as np

from ..analysis import features
from ..analysis.saliency import ig_points, integrated_gradients, score_gradient, smoothgrad
from ..analysis.saliency import saliency as saliency_map
from ..analysis.occlusion import OcclusionResult, check_settings
from ..analysis.occlusion import occlusion as occlusion_maps
from ..analysis.feature_occlusion import FeatureOcclusion, feature_occlusion
from ..plots import inside as plots
from .common import StageOutput, chosen_images, one_or_pair, open_run, output_folder


@dataclass
class InspectOutput(StageOutput):
    indices: np.ndarray = None   # test-set indices of the images [N]
    labels: np.ndarray = None    # their classes [N]
    filters: dict = None         # conv1 [32, 1, 3, 3], conv2 (the chosen filters), conv2_filters
    maps: dict = None            # layer name -> feature maps [N, C, H, W]

    def describe(self):
        return f"filters and feature maps of {len(self.indices)} image(s) written to {self.folder}"


def inspect(run, *, digits=(0, 5), indices=None, filters=features.REPORT_FILTERS, post_activation=False,
            progress=True):
    """Draw the learned filters, and the feature maps of the sample images of ``digits`` (or of the test
    images ``indices``); before the activation by default, as the report. ``progress`` is accepted so that
    every stage takes it (nothing here is slow). Returns an :class:`InspectOutput`."""
    run = open_run(run)
    if indices is None:
        n = len(run.classifier.class_names)
        bad = [d for d in digits if not 0 <= d < n]
        if bad:
            raise ValueError(f"digit {bad[0]} is out of range: the classes are 0..{n - 1}")
        samples = run.sample_indices()
        indices = [samples[d] for d in digits]
    idx, x, y = chosen_images(run, indices)
    clf = run.classifier
    w = features.filters(clf, filters)                        # checks the filter numbers
    maps = features.feature_maps(clf, x, post_activation=post_activation)
    names = clf.class_names
    with output_folder(run, "inspect") as out:
        out.figure(plots.conv1_filters(w["conv1"]), "conv1_filters.png")
        out.figure(plots.conv2_filters(w["conv2"], w["conv2_filters"]), "conv2_filters.png")
        for layer, m in maps.items():
            for k, (i, label) in enumerate(zip(idx, y)):
                out.figure(plots.feature_maps(m[k], x[k], layer, f"true {names[label]}, test image {i}",
                                              post_activation=post_activation), f"{layer}_maps_test{i}.png")
        out.npz("feature_maps.npz", {
            "images": x, "labels": y, "indices": idx, "post_activation": post_activation,
            **maps, "conv1_weight": w["conv1"], "conv2_weight": w["conv2"], "conv2_filters": w["conv2_filters"],
            "class_names": np.array(names),
        })
    return InspectOutput(folder=out.final, files=out.files, indices=idx, labels=y, filters=w, maps=maps)


@dataclass
class OcclusionOutput(StageOutput):
    indices: np.ndarray = None
    labels: np.ndarray = None
    occlusion: OcclusionResult = None   # probability / predicted [N, rows, cols], attribution [N, H, W], ...
    feature: FeatureOcclusion = None     # the strongest feature map: activation [N, rows, cols], projection, ...
    changed: int = 0                    # images whose predicted class changes at some patch position

    def describe(self):
        rows, cols = self.occlusion.grid_shape
        return (f"occlusion of {len(self.indices)} image(s), {rows}x{cols} patch positions each: "
                f"{self.changed} image(s) change class somewhere; written to {self.folder}")


def occlusion(run, *, patch=10, stride=2, fill=0.0, batch_size=256, indices=None, feature_layer="last",
              progress=True):
    """Slide a ``patch`` (pixels: one number, or height and width) filled with ``fill`` over each image in
    steps of ``stride``; map the true class's probability and the predicted class at every position, and,
    as Zeiler & Fergus, the total activation of ``feature_layer``'s strongest map and its projection to
    pixels (:mod:`npcnn.analysis.feature_occlusion`; None leaves them out). Returns an
    :class:`OcclusionOutput`."""
    patch, stride = one_or_pair(patch, "patch"), one_or_pair(stride, "stride")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size > 0):
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size}")
    run = open_run(run)
    idx, x, y = chosen_images(run, indices)
    patch, stride = check_settings(x.shape[1:], patch, stride)
    clf = run.classifier
    f = None
    if feature_layer is not None:
        f = feature_occlusion(clf, x, feature_layer, patch=patch, stride=stride, fill=fill, batch_size=batch_size)
    r = occlusion_maps(clf, x, y, patch=patch, stride=stride, fill=fill, batch_size=batch_size, progress=progress)
    names = clf.class_names
    with output_folder(run, "occlusion") as out:
        for k, i in enumerate(idx):
            panels = None if f is None else {"activation": f.activation[k], "base_activation": f.base_activation[k],
                                             "projection": f.projection[k], "channel": f.channel[k], "layer": f.layer}
            out.figure(plots.occlusion(x[k], r.probability[k], r.predicted[k], int(y[k]), names, patch, stride,
                                       fill=fill, base_probability=r.base_probability[k], feature=panels),
                       f"occlusion_test{i}.png")
        out.figure(plots.occlusion_attribution(x, r.attribution, y, names), "attribution.png")
        out.npz("occlusion.npz", {
            "images": x, "labels": y, "indices": idx, "probability": r.probability, "predicted": r.predicted,
            "attribution": r.attribution, "base_probability": r.base_probability,
            "patch": np.array(patch), "stride": np.array(stride), "fill": np.array(fill),
            "class_names": np.array(names),
            **({} if f is None else {
                "feature_layer": np.array(f.layer), "feature_channel": f.channel, "feature_activation": f.activation,
                "feature_base_activation": f.base_activation, "feature_projection": f.projection}),
        })
    changed = int((r.predicted != y[:, None, None]).any(axis=(1, 2)).sum())
    return OcclusionOutput(folder=out.final, files=out.files, indices=idx, labels=y, occlusion=r, feature=f,
                           changed=changed)


@dataclass
class SaliencyOutput(StageOutput):
    indices: np.ndarray = None
    labels: np.ndarray = None
    maps: dict = None   # "saliency", "smoothgrad", "integrated_gradients" -> [N, H, W]

    def describe(self):
        return f"saliency maps of {len(self.indices)} image(s) written to {self.folder}"


def saliency(run, *, indices=None, output="logit", steps=50, method="gausslegendre", samples=25, stdev=0.15,
             seed=0, signed=False, progress=True):
    """Vanilla gradient, SmoothGrad (``samples`` noisy copies, noise ``stdev`` in pixel units, seeded) and
    integrated gradients (``steps``, quadrature ``method``) of the true class's ``output`` ("logit" or
    "probability"); absolute values unless ``signed``. ``progress`` is accepted so that every stage takes
    it. Returns a :class:`SaliencyOutput`."""
    if not stdev >= 0:
        raise ValueError(f"--stdev must be >= 0, got {stdev}")
    if not (isinstance(samples, (int, np.integer)) and samples > 0):
        raise ValueError(f"--samples must be a positive integer, got {samples}")
    score_gradient(output)          # checks output
    ig_points(steps, method)        # checks steps and method
    run = open_run(run)
    idx, x, y = chosen_images(run, indices)
    clf = run.classifier
    absolute = not signed
    maps = {
        "saliency": saliency_map(clf, x, y, output=output, absolute=absolute),
        "smoothgrad": smoothgrad(clf, x, y, output=output, samples=samples, stdev=stdev, absolute=absolute,
                                 seed=seed),
        "integrated_gradients": integrated_gradients(clf, x, y, output=output, steps=steps, method=method),
    }
    names = clf.class_names
    with output_folder(run, "saliency") as out:
        out.figure(plots.saliency(x, maps, y, names), "saliency.png")
        for k, i in enumerate(idx):
            out.figure(plots.saliency(x[k:k + 1], {m: v[k:k + 1] for m, v in maps.items()}, y[k:k + 1], names,
                                      title=f"saliency of test image {i} (true {names[y[k]]}, {output})"),
                       f"saliency_test{i}.png")
        out.npz("saliency.npz", {
            "images": x, "labels": y, "indices": idx, **maps, "output": np.array(output),
            "abs": np.array(absolute), "steps": np.array(steps), "method": np.array(method),
            "samples": np.array(samples), "stdev": np.array(stdev), "seed": np.array(seed),
            "class_names": np.array(names),
        })
    return SaliencyOutput(folder=out.final, files=out.files, indices=idx, labels=y, maps=maps)
