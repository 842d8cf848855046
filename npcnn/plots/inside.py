"""Figures for "looking inside" the net: filters, feature maps, occlusion, saliency.

Arrays in, a matplotlib Figure out (:func:`npcnn.io.save_figure` writes it).
Weights and feature maps share one diverging colour scale per figure,
centred on zero (blue negative, red positive), with a colour bar.
"""
import matplotlib.pyplot as plt
import numpy as np

DIVERGING = "RdBu_r"


def _symmetric_limit(a):
    m = float(np.max(np.abs(a))) if np.size(a) else 1.0
    return m if m > 0 else 1.0


def _grid(n, cols):
    cols = min(n, cols)
    return int(np.ceil(n / cols)), cols


def _mosaic(tiles, cols, gap=1):
    """Tiles [K, h, w] laid out row by row in one array, separated by ``gap`` NaN pixels (drawn blank).

    One ``imshow`` of a mosaic draws far faster than one axes per tile.
    """
    tiles = np.asarray(tiles, dtype=np.float64)
    k, h, w = tiles.shape
    rows, cols = _grid(k, cols)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan)
    for i in range(k):
        r, c = divmod(i, cols)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tiles[i]
    return out


def _diverging():
    return plt.get_cmap(DIVERGING).with_extremes(bad="white")


def _show_mosaic(ax, tiles, cols, vlim, gap=1, numbers=True):
    """Draw tiles as a mosaic on ``ax`` with a zero-centred scale; number each tile at its top-left."""
    k, h, w = np.shape(tiles)
    im = ax.imshow(_mosaic(tiles, cols, gap), cmap=_diverging(), vmin=-vlim, vmax=vlim, interpolation="nearest")
    if numbers:
        for i in range(k):
            r, c = divmod(i, min(k, cols))
            ax.text(c * (w + gap) - 0.5, r * (h + gap) - 0.6, str(i), fontsize=6, va="bottom", ha="left")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    return im


def conv1_filters(weight, title="conv1: the 32 learned 3x3 filters"):
    """All conv1 filters [F, 1, kh, kw] in one grid, one colour scale centred on zero."""
    weight = np.asarray(weight)
    fig, ax = plt.subplots(figsize=(8, 4.6))
    im = _show_mosaic(ax, weight[:, 0], 8, _symmetric_limit(weight))
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="weight")
    ax.set_title(title, pad=14)
    return fig


def conv2_filters(weight, filter_ids, title="conv2: chosen filters (rows), one 3x3 slice per input channel (columns)"):
    """Chosen conv2 filters [k, C, kh, kw]: one row per filter, one column per input channel."""
    weight = np.asarray(weight)
    k, c, kh, kw = weight.shape
    fig, ax = plt.subplots(figsize=(0.42 * c + 1.8, 0.5 * k + 1.2))
    im = _show_mosaic(ax, weight.reshape(k * c, kh, kw), c, _symmetric_limit(weight), numbers=False)
    ax.set_yticks([r * (kh + 1) + (kh - 1) / 2 for r in range(k)], [f"filter {f}" for f in filter_ids], fontsize=8)
    ax.set_xticks([j * (kw + 1) + (kw - 1) / 2 for j in range(c)], [str(j) for j in range(c)], fontsize=6)
    ax.set_xlabel("input channel (a conv1 feature map)")
    ax.tick_params(length=0)
    fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01, label="weight")
    ax.set_title(title)
    return fig


def feature_maps(maps, image, layer, label_text="", post_activation=False):
    """One image's feature maps [C, h, w] of one layer beside the image itself (grey), one scale centred on zero."""
    maps = np.asarray(maps)
    stage = "after ReLU" if post_activation else "before the activation"
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.6), width_ratios=[1, 5], layout="constrained")
    ax0.imshow(np.asarray(image).reshape(np.shape(image)[-2:]), cmap="gray", vmin=0, vmax=1)
    ax0.set_title("input", fontsize=9)
    ax0.set_xticks([])
    ax0.set_yticks([])
    gap = max(1, maps.shape[-1] // 10)
    im = _show_mosaic(ax1, maps, 8, _symmetric_limit(maps), gap=gap)
    fig.colorbar(im, ax=ax1, fraction=0.03, pad=0.02, label="activation")
    fig.suptitle(f"{layer} feature maps, {stage}" + (f" ({label_text})" if label_text else ""))
    return fig


def occlusion(image, probability, predicted, label, class_names, patch, stride, fill=0.0, base_probability=None,
              feature=None):
    """One image: the image, the true-class probability per patch position (0-1), the predicted class map.

    ``probability`` and ``predicted`` are [Gh, Gw]; each predicted cell is
    labelled by its class name. ``feature`` (a dict with ``activation`` [Gh, Gw], ``base_activation``,
    ``projection`` [H, W], ``channel`` and ``layer``) adds Zeiler & Fergus's two panels after the image:
    the strongest feature map's total activation per patch position, and that map projected to pixels.
    """
    probability, predicted = np.asarray(probability), np.asarray(predicted)
    gh, gw = probability.shape
    name = class_names[label]
    extra = 2 if feature is not None else 0
    fig, axes = plt.subplots(1, 3 + extra, figsize=(12.5 + 4.0 * extra, 4.1), layout="constrained")
    if feature is not None:
        _feature_panels(fig, axes[1], axes[2], feature, gw, stride)
        axes = [axes[0], *axes[3:]]
    img = np.asarray(image).reshape(np.shape(image)[-2:])
    axes[0].imshow(img, cmap="gray", vmin=0, vmax=1)
    axes[0].add_patch(plt.Rectangle((-0.5, -0.5), patch[1], patch[0], fill=False, ec="tab:orange", lw=1.5))
    base = f", p = {base_probability:.3f}" if base_probability is not None else ""
    axes[0].set_title(f"true class {name}{base}\npatch {patch[0]}x{patch[1]} (orange), stride {stride[0]}, "
                      f"fill {fill:g}", fontsize=9)
    im = axes[1].imshow(probability, cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04, label=f"P({name})")
    axes[1].set_title(f"probability of {name} with the patch there", fontsize=9)
    n_classes = len(class_names)
    cmap = plt.get_cmap("tab10" if n_classes <= 10 else "tab20", n_classes)
    axes[2].imshow(predicted, cmap=cmap, vmin=-0.5, vmax=n_classes - 0.5)
    size = 8 if max(gh, gw) <= 12 else 5
    for r in range(gh):
        for c in range(gw):
            k = int(predicted[r, c])
            axes[2].text(c, r, str(class_names[k])[:3], ha="center", va="center", fontsize=size,
                         color="white" if k != label else "black", fontweight="bold" if k != label else "normal")
    axes[2].set_title("predicted class with the patch there", fontsize=9)
    for ax in axes[1:]:
        ax.set_xlabel("patch column")
        ax.set_ylabel("patch row")
        ax.set_xticks(range(gw), [str(c * stride[1]) for c in range(gw)], fontsize=6)
        ax.set_yticks(range(gh), [str(r * stride[0]) for r in range(gh)], fontsize=6)
    return fig


def _feature_panels(fig, ax_total, ax_projection, feature, gw, stride):
    """Zeiler & Fergus's panels (b) and (c): the strongest map's total activation with the patch at each
    position (0 .. its unoccluded total), and the map projected to pixels (diverging, centred on 0)."""
    channel, layer = int(feature["channel"]), str(feature["layer"]).split(" (")[0]
    base = float(feature["base_activation"])
    im = ax_total.imshow(np.asarray(feature["activation"]), cmap="magma", vmin=0, vmax=max(base, 1e-12))
    fig.colorbar(im, ax=ax_total, fraction=0.046, pad=0.04, label=f"total activation (unoccluded {base:.3g})")
    ax_total.set_title(f"{layer} map {channel} (the strongest):\nits total activation with the patch there",
                       fontsize=9)
    ax_total.set_xlabel("patch column")
    ax_total.set_ylabel("patch row")
    gh = np.shape(feature["activation"])[0]
    ax_total.set_xticks(range(gw), [str(c * stride[1]) for c in range(gw)], fontsize=6)
    ax_total.set_yticks(range(gh), [str(r * stride[0]) for r in range(gh)], fontsize=6)
    projection = np.asarray(feature["projection"])
    v = _symmetric_limit(projection)
    ax_projection.imshow(projection, cmap=DIVERGING, vmin=-v, vmax=v)
    ax_projection.set_title(f"{layer} map {channel} projected to pixels\n(deconvnet, Zeiler & Fergus)",
                            fontsize=9)
    ax_projection.set_xticks([])
    ax_projection.set_yticks([])


def saliency(images, maps, labels, class_names, title="saliency: which pixels move the true class's score"):
    """Each image beside its saliency maps: ``maps`` is {method name: [N, H, W]}; one row per image.

    Each map has its own scale (non-negative maps: 0..max, grey-red;
    signed maps: centred on zero, diverging).
    """
    images = np.asarray(images)
    n = len(images)
    methods = list(maps)
    fig, axes = plt.subplots(n, 1 + len(methods), figsize=(2.1 * (1 + len(methods)), 2.1 * n + 0.6), squeeze=False,
                             layout="constrained")
    for i in range(n):
        axes[i, 0].imshow(images[i].reshape(images.shape[-2:]), cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_ylabel(f"true {class_names[labels[i]]}", fontsize=8)
        for j, m in enumerate(methods):
            a = np.asarray(maps[m][i])
            ax = axes[i, 1 + j]
            if a.min() >= 0:
                ax.imshow(a, cmap="Reds", vmin=0, vmax=max(float(a.max()), 1e-12))
            else:
                v = _symmetric_limit(a)
                ax.imshow(a, cmap=DIVERGING, vmin=-v, vmax=v)
            if i == 0:
                ax.set_title(m, fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def occlusion_attribution(images, attribution, labels, class_names,
                          title="occlusion attribution: drop of the true-class probability"):
    """Captum-style per-pixel occlusion attribution beside each image (diverging, one scale per image)."""
    return saliency(images, {"occlusion attribution": attribution}, labels, class_names, title=title)
