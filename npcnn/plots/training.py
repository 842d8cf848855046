"""Training figures: curves, confusion matrix, classification report, sample predictions."""
import matplotlib.pyplot as plt
import numpy as np


def _epochs(history):
    return np.arange(1, len(history["train_loss"]) + 1)


def curves(history, metric, title=None):
    """Train and test ``metric`` ("loss" or "accuracy") per epoch."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    e = _epochs(history)
    ax.plot(e, history[f"train_{metric}"], "o-", label="train")
    ax.plot(e, history[f"test_{metric}"], "s-", label="test")
    if metric == "accuracy" and history.get("robust_accuracy"):
        ax.plot(e, history["robust_accuracy"], "^-", label="under PGD (a fixed training batch)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_xticks(e)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or f"{metric} per epoch")
    return fig


def confusion_matrix(matrix, class_names, title="confusion matrix (test set)"):
    """A labelled heatmap; each cell shows its count."""
    matrix = np.asarray(matrix)
    size = max(5, 0.55 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45 if max(map(len, class_names)) > 2 else 0, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]}", ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > threshold else "black")
    ax.set_title(title)
    return fig


def classification_report(report, class_names, title="classification report (test set)"):
    """scikit-learn's report dict drawn as a table."""
    rows, cells = [], []
    for name in class_names + ["macro avg", "weighted avg"]:
        r = report[name]
        rows.append(name)
        cells.append([f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1-score']:.4f}", f"{int(r['support'])}"])
    rows.append("accuracy")
    total = int(report["macro avg"]["support"])
    cells.append(["", "", f"{report['accuracy']:.4f}", f"{total}"])
    fig, ax = plt.subplots(figsize=(6, 0.32 * len(rows) + 0.9))
    ax.axis("off")
    table = ax.table(cellText=cells, rowLabels=rows, colLabels=["precision", "recall", "f1-score", "support"],
                     loc="center", cellLoc="right")
    table.scale(1, 1.2)
    ax.set_title(title)
    return fig


def sample_predictions(images, labels, predicted, probability, class_names, title="random test images"):
    """One image per class with its true class, predicted class and that prediction's probability."""
    n = len(images)
    cols = min(n, 5)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.75 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t, p, q in zip(axes.flat, images, labels, predicted, probability):
        ax.imshow(np.asarray(img).reshape(img.shape[-2:]), cmap="gray", vmin=0, vmax=1)
        colour = "green" if t == p else "red"
        ax.set_title(f"true {class_names[t]}\npred {class_names[p]} ({q:.3f})", fontsize=8, color=colour)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def comparison(histories, seconds, title="BatchNorm vs no BatchNorm"):
    """Test accuracy and loss per epoch of several runs side by side, with their training times."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for name, h in histories.items():
        e = _epochs(h)
        axes[0].plot(e, h["test_accuracy"], "o-", label=f"{name} test")
        axes[0].plot(e, h["train_accuracy"], "--", alpha=0.6, label=f"{name} train")
        axes[1].plot(e, h["test_loss"], "o-", label=f"{name} test")
        axes[1].plot(e, h["train_loss"], "--", alpha=0.6, label=f"{name} train")
    axes[0].set_title("accuracy per epoch")
    axes[1].set_title("loss per epoch")
    for ax in axes[:2]:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    names = list(seconds)
    bars = axes[2].bar(names, [seconds[n] for n in names], color=["tab:blue", "tab:orange"][:len(names)])
    axes[2].bar_label(bars, fmt="%.1f s")
    axes[2].set_ylabel("training time (s)")
    axes[2].set_title("training time")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
