"""Figures for "looking deeper": the whole test set as the net sees it, and what each conv channel does.

Arrays in, a matplotlib Figure out (:func:`npcnn.io.save_figure` writes it):

* :func:`embedding`        the 2-D map of the last hidden layer, coloured by true class, errors marked;
* :func:`ablation`         accuracy drop per ablated channel (bars, sorted) and per channel and class (heatmap);
* :func:`top_activations`  each channel's strongest input patches from the data set, with their values.
"""
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.offsetbox import AnnotationBbox, OffsetImage, TextArea, VPacker

DIVERGING = "RdBu_r"


def _name(class_names, c):
    return str(class_names[c]) if class_names is not None else str(c)


def _class_colours(n):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _thumbnails(ax, points, wrong, labels, predicted, images, count, class_names):
    """Up to ``count`` misclassified digits (spread over the directions from the map's centre) drawn on a
    ring just outside the map, each joined to its point and labelled true -> predicted."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    centre, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, 1e-12)
    angle = np.arctan2(*((points[wrong] - centre) / half).T[::-1])
    chosen = wrong[np.argsort(angle, kind="stable")]
    chosen = chosen[np.unique(np.linspace(0, len(chosen) - 1, min(count, len(chosen))).round().astype(int))]
    first = np.arctan2(*((points[chosen[0]] - centre) / half)[::-1])
    scale = 255.0 if np.asarray(images).dtype == np.uint8 else 1.0     # uint8 0..255 or pixels in [0, 1]
    for k, i in enumerate(chosen):
        slot = first + 2 * np.pi * k / len(chosen)      # evenly spaced slots, in the points' angular order
        at = centre + 1.3 * half * np.array([np.cos(slot), np.sin(slot)])
        img = np.asarray(images[i], dtype=np.float64).reshape(np.shape(images[i])[-2:]) / scale
        box = VPacker(children=[TextArea(f"{_name(class_names, labels[i])} -> {_name(class_names, predicted[i])}",
                                         textprops={"fontsize": 7}),
                                OffsetImage(img, cmap="gray", zoom=1.2, norm=plt.Normalize(0, 1))],
                      align="center", pad=0, sep=1)
        ax.add_artist(AnnotationBbox(box, points[i], xybox=at, xycoords="data", boxcoords="data", pad=0.2,
                                     arrowprops={"arrowstyle": "-", "color": "black", "lw": 0.6},
                                     bboxprops={"edgecolor": "black", "lw": 0.6}))
    ax.set_xlim(centre[0] - 1.55 * half[0], centre[0] + 1.55 * half[0])
    ax.set_ylim(centre[1] - 1.55 * half[1], centre[1] + 1.55 * half[1])


def embedding(points, labels, predicted, class_names=None, images=None, thumbnails=8, method="t-SNE",
              knn=None, title=None):
    """The 2-D map [N, 2], one dot per image coloured by its true class (legend), a black x on every image
    the net gets wrong, and, when ``images`` [N, H, W] (uint8 or pixels in [0, 1]) are given, up to
    ``thumbnails`` of those misclassified digits on a ring around the map, joined to their points and
    labelled true -> predicted."""
    points, labels, predicted = np.asarray(points), np.asarray(labels), np.asarray(predicted)
    n_classes = int(max(labels.max(), predicted.max()) + 1) if class_names is None else len(class_names)
    colours = _class_colours(n_classes)
    wrong = np.flatnonzero(labels != predicted)
    fig, ax = plt.subplots(figsize=(9, 7.5), layout="constrained")
    size = 4 if len(points) > 3000 else 8
    for c in range(n_classes):
        at = labels == c
        if at.any():
            ax.scatter(points[at, 0], points[at, 1], s=size, color=colours[c], label=_name(class_names, c),
                       linewidths=0, alpha=0.8)
    if len(wrong):
        ax.scatter(points[wrong, 0], points[wrong, 1], s=22, marker="x", color="black", linewidths=0.9,
                   label=f"misclassified ({len(wrong)})")
    if images is not None and len(wrong):
        _thumbnails(ax, points, wrong, labels, predicted, images, thumbnails, class_names)
    ax.legend(fontsize=8, markerscale=2.5 if size < 8 else 1.5, loc="center left", bbox_to_anchor=(1.0, 0.5),
              title="true class", title_fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    if title is None:
        title = f"{method} of the last hidden layer, {len(points):,} test images"
        if knn is not None:
            title += f" (5-NN accuracy in the map {knn:.1%})"
    ax.set_title(title, fontsize=10)
    return fig


def ablation(drop, class_drop, channels, class_names=None, base_accuracy=None, layer="conv2", num_images=None):
    """Left: the accuracy drop (percentage points) when each channel is set to zero, channels sorted by it;
    right: the drop per channel (rows, same order) and class (columns), diverging scale centred on zero
    (red: the class loses accuracy without the channel)."""
    drop, class_drop, channels = np.asarray(drop), np.asarray(class_drop), np.asarray(channels)
    order = np.lexsort((channels, -drop))
    k, n_classes = class_drop.shape
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, max(4.5, 0.22 * k + 1.8)), width_ratios=[1.5, 1],
                               layout="constrained")
    a.bar(np.arange(k), 100 * drop[order], color=np.where(drop[order] > 0, "tab:red", "tab:blue"))
    a.set_xticks(np.arange(k), [str(c) for c in channels[order]], fontsize=7 if k <= 40 else 5, rotation=90)
    a.set_xlabel(f"{layer} channel set to zero (sorted)")
    a.set_ylabel("accuracy drop (percentage points)")
    a.axhline(0, color="black", lw=0.6)
    a.grid(axis="y", alpha=0.3)
    base = f", accuracy {base_accuracy:.2%} with all channels" if base_accuracy is not None else ""
    on = f" on {num_images:,} test images" if num_images else ""
    a.set_title(f"{layer}: accuracy drop per ablated channel{on}{base}", fontsize=9)
    values = 100 * class_drop[order]
    lim = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    im = b.imshow(values, cmap=plt.get_cmap(DIVERGING).with_extremes(bad="lightgrey"), vmin=-(lim or 1.0),
                  vmax=lim or 1.0, aspect="auto", interpolation="nearest")
    b.set_yticks(np.arange(k), [str(c) for c in channels[order]], fontsize=7 if k <= 40 else 5)
    b.set_xticks(np.arange(n_classes), [_name(class_names, c) for c in range(n_classes)], fontsize=8)
    b.set_xlabel("true class")
    b.set_ylabel(f"{layer} channel (same order)")
    b.set_title("accuracy drop per class (percentage points)", fontsize=9)
    fig.colorbar(im, ax=b, fraction=0.05, pad=0.02, label="drop (points)")
    return fig


def _mosaic(patches, gap):
    """Patches [C, k, h, w] as one array: one row per channel, ``gap`` NaN pixels between tiles."""
    c, k, h, w = patches.shape
    out = np.full((c * (h + gap) - gap, k * (w + gap) - gap), np.nan)
    for i, j in np.ndindex(c, k):
        out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = patches[i, j]
    return out


def top_activations(patches, values, channels=None, layer="conv2", receptive_field=None, columns=2,
                    title=None):
    """Each channel's ``k`` strongest input patches [C, k, Rh, Rw] (pixels in [0, 1], NaN where the receptive
    field hangs over the image border, drawn pale), strongest first, each with its activation value
    ``values`` [C, k] above it. Channels are rows, laid out in ``columns`` blocks side by side."""
    patches, values = np.asarray(patches, np.float64), np.asarray(values)
    c, k, h, w = patches.shape
    channels = np.arange(c) if channels is None else np.asarray(channels)
    columns = max(1, min(columns, c))
    per = int(np.ceil(c / columns))
    gap = max(1, h // 4)
    tile = 0.62 if h >= 6 else 0.45
    mosaic_h, mosaic_w = per * (h + gap) - gap, k * (w + gap) - gap
    width = columns * k * tile
    fig, axes = plt.subplots(1, columns, figsize=(width + 1, width / columns * mosaic_h / mosaic_w + 0.9),
                             squeeze=False, layout="constrained")
    grey = plt.get_cmap("gray").with_extremes(bad="lightsteelblue")           # gaps between tiles
    pale = ListedColormap(["#f0d8c0"]).with_extremes(bad=(0, 0, 0, 0))        # outside the image: pale
    for b, ax in enumerate(axes[0]):
        rows = np.arange(b * per, min((b + 1) * per, c))
        block = np.full((per, k, h, w), np.nan)
        block[:len(rows)] = patches[rows]
        outside = np.where(np.isnan(block), 1.0, np.nan)
        outside[len(rows):] = np.nan
        ax.imshow(_mosaic(block, gap), cmap=grey, vmin=0, vmax=1, interpolation="nearest")
        ax.imshow(_mosaic(outside, gap), cmap=pale, vmin=0, vmax=1, interpolation="nearest")
        for r, ch in enumerate(rows):
            for j in range(k):
                ax.text(j * (w + gap) + (w - 1) / 2, r * (h + gap) - 0.55, f"{values[ch, j]:.2f}", fontsize=5,
                        ha="center", va="bottom", color="tab:red")
        ax.set_yticks([r * (h + gap) + (h - 1) / 2 for r in range(len(rows))],
                      [f"ch {channels[ch]}" for ch in rows], fontsize=7)
        ax.set_xticks([])
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
    if title is None:
        rf = f", receptive field {h}x{w} px" if receptive_field is None else \
            f", receptive field {receptive_field['size'][0]}x{receptive_field['size'][1]} px"
        title = (f"{layer}: each channel's {k} strongest test-set patches (activation after ReLU in red{rf}; "
                 f"pale: outside the image)")
    fig.suptitle(title, fontsize=9)
    return fig


def channel_images(images, channels, ratio, layer, title=None):
    """The input that drives each channel hardest, one tile per channel, titled with how much harder than
    the channel's best test image (the ratio of mean activations)."""
    k = len(images)
    cols = min(k, 16)
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.0 * cols + 0.4, 1.15 * rows + 0.7), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for j in range(k):
        ax = axes.ravel()[j]
        ax.imshow(images[j], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"ch {int(channels[j])}\nx{ratio[j]:.1f}", fontsize=7)
    fig.suptitle(title or f"{layer}: the input each channel likes best (xR: R times its best test image's mean "
                          f"activation)", fontsize=9)
    fig.tight_layout()
    return fig
