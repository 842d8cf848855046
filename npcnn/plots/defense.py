"""Figures of "Defending the net": the standard and the robust net under the same attacks."""
import matplotlib.pyplot as plt
import numpy as np

NET_STYLES = {"standard": dict(ls="--", marker="o", alpha=0.75), "robust": dict(ls="-", marker="s")}


def defense_curves(eps, curves, budget, images):
    """Accuracy against eps: one colour per attack, dashed for the standard net, solid for the robust one;
    ``curves`` is {net: {attack name: [E]}}, ``budget`` the eps of the table (a vertical line)."""
    fig, ax = plt.subplots(figsize=(7.2, 4.4), layout="constrained")
    colours = dict(zip(next(iter(curves.values())), plt.get_cmap("tab10").colors))
    for net, by_attack in curves.items():
        for attack, acc in by_attack.items():
            ax.plot(eps, np.asarray(acc), color=colours[attack], label=f"{net} net, {attack}", **NET_STYLES.get(net, {}))
    ax.axvline(budget, color="0.5", lw=0.8, ls=":")
    ax.text(budget, 0.03, f" eps {budget:g}", color="0.4", fontsize=8)
    ax.set_xlabel("eps (L-inf, pixel units)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"the standard and the adversarially trained net under attack ({images:,} test images)", fontsize=10)
    return fig
