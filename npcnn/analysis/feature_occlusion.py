"""Zeiler & Fergus's occlusion panels: what the patch does to the strongest feature map, and that map in pixels.

Zeiler and Fergus (2014, figure 7) slide a grey square over an image and draw, beside the classifier's
probability, two views of one feature map of the top conv layer: the one with the strongest response to
the unoccluded image. For image ``n`` and the layer's output ``A`` [N, K, h, w] (``layer="conv2"``: the
rectified maps after conv2, see :func:`npcnn.analysis.cam.resolve_layer`):

* the strongest map: ``k_n = argmax_k sum_ij A_nkij`` (the largest total activation);
* ``activation[n, r, c] = sum_ij A_{n k_n ij}`` of the image occluded with the patch at grid cell (r, c),
  the same grid and patches as :func:`npcnn.analysis.occlusion.occlusion`: where the total falls, the patch
  covers what the map responds to;
* ``projection[n]``: the map projected down to pixels by the deconvnet: every other activation of the layer
  set to zero and the map itself sent back, ``g = A`` on channel ``k_n`` (0 elsewhere), through each
  layer's backward with the deconvolution rule at every ReLU (``dx = max(g, 0)``; see
  :mod:`npcnn.analysis.cam`). That is the input-gradient of ``0.5 * ||A_{n k_n}||^2`` under the deconvnet
  rule, what Captum's ``NeuronDeconvolution`` gives with that selector, in pixel space (``/ std``).
"""
from dataclasses import dataclass

import numpy as np

from .cam import _backward, resolve_layer
from .occlusion import as_images, check_settings, grid_size, occluded_batches, occlusion_masks


@dataclass
class FeatureOcclusion:
    """The strongest feature map of N images, under occlusion and projected to pixels."""

    channel: np.ndarray          # [N] k_n, the channel with the largest total activation on the clean image
    base_activation: np.ndarray  # [N] its total activation without a patch
    activation: np.ndarray       # [N, Gh, Gw] its total activation with the patch at each position
    projection: np.ndarray       # [N, H, W] the map projected to pixel space by the deconvnet
    layer: str                   # which activation, in words ("conv2 + ReLU (layer 4)")
    index: int                   # its index in classifier.body
    patch: tuple
    stride: tuple
    fill: float


def _activations(classifier, x, index):
    """The output of ``classifier.body[index]`` for pixel images ``x`` [B, H, W] (the layers keep their
    forward caches, for a backward pass)."""
    z = classifier.normalize(x[:, None])
    for layer in classifier.body.layers[:index + 1]:
        z = layer.forward(z)
    return z


def _check_channel(channel, n, k, where):
    c = np.asarray(channel)
    if c.dtype.kind not in "iu" or c.ndim > 1 or (c.ndim == 1 and len(c) != n):
        raise ValueError(f"{where}: channel must be one channel number or one per image ({n}), got {channel!r}")
    c = np.broadcast_to(c.astype(np.int64), (n,)).copy()
    if np.any((c < 0) | (c >= k)):
        raise ValueError(f"{where}: channels must be in 0..{k - 1}, got {c.tolist()}")
    return c


def strongest_channels(classifier, images, layer="last"):
    """``(k [N], total activation of k [N], index, description)``: each image's strongest map at ``layer``."""
    x = as_images(images, "strongest_channels").astype(classifier.dtype, copy=False)
    index, described = resolve_layer(classifier, layer, "strongest_channels", x.shape[1:])
    classifier.model.eval()
    step = classifier.batch_size
    totals = np.concatenate([_activations(classifier, x[a:a + step], index).sum(axis=(2, 3))
                             for a in range(0, len(x), step)])
    k = totals.argmax(axis=1)
    return k, totals[np.arange(len(x)), k].astype(np.float64), index, described


def project_feature_map(classifier, images, channel, layer="last"):
    """[N, H, W]: map ``channel`` (one number, or one per image) of ``layer`` projected to pixels by the
    deconvnet, all other activations of the layer set to zero (see the module's docstring)."""
    x = as_images(images, "project_feature_map").astype(classifier.dtype, copy=False)
    index, _ = resolve_layer(classifier, layer, "project_feature_map", x.shape[1:])
    classifier.model.eval()
    inv_std = classifier.dtype.type(1 / classifier.normalization.std)
    step, parts = classifier.batch_size, []
    for a in range(0, len(x), step):
        acts = _activations(classifier, x[a:a + step], index)
        ks = _check_channel(channel, len(x), acts.shape[1], "project_feature_map")[a:a + step]
        seed = np.zeros_like(acts)
        rows = np.arange(len(ks))
        seed[rows, ks] = acts[rows, ks]                           # only the chosen map goes back
        parts.append((_backward(classifier, seed, "deconvolution", 0, start=index + 1) * inv_std)[:, 0])
    return np.concatenate(parts)


def feature_occlusion(classifier, images, layer="last", patch=10, stride=2, fill=0.0, batch_size=256,
                      progress=False):
    """The Zeiler & Fergus panels of each image (see the module's docstring): a :class:`FeatureOcclusion`.
    ``patch``, ``stride``, ``fill`` and ``batch_size`` as in :func:`npcnn.analysis.occlusion.occlusion`."""
    x = as_images(images, "feature_occlusion").astype(classifier.dtype, copy=False)
    if int(batch_size) <= 0:
        raise ValueError(f"feature_occlusion: batch_size must be positive, got {batch_size}")
    n, h, w = x.shape
    patch, stride = check_settings((h, w), patch, stride)
    k, base, index, described = strongest_channels(classifier, x, layer)
    masks = occlusion_masks((h, w), patch, stride)
    activation = np.empty(n * len(masks), dtype=np.float64)
    for flat, img, _, occluded in occluded_batches(x, masks, fill, batch_size, progress, desc="feature occlusion"):
        acts = _activations(classifier, occluded, index)
        activation[flat] = acts[np.arange(len(flat)), k[img]].sum(axis=(1, 2))
    gh, gw = grid_size(h, patch[0], stride[0]), grid_size(w, patch[1], stride[1])
    return FeatureOcclusion(channel=k, base_activation=base, activation=activation.reshape(n, gh, gw),
                            projection=project_feature_map(classifier, x, k, index), layer=described, index=index,
                            patch=patch, stride=stride, fill=float(fill))
