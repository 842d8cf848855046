"""What an attack returns, and the error it raises.

* :class:`AttackResult`: the final images, the start, the perturbation, the per-step objective
  history, and success / confidence / distance read off them. Every attack returns one.
* :class:`TransferResult`: one learned noise added to a whole test set (:func:`transfer_noise`).
* :class:`RobustnessResult`: accuracy against the attack size (:func:`robustness_curve`).
* :class:`NonFiniteAttackError`: the objective or the gradient became NaN or infinite.

All images in a result are in pixel space, whatever space the optimisation ran in.
"""
from dataclasses import dataclass, field

import numpy as np


class NonFiniteAttackError(ValueError):
    """The objective or the gradient became NaN or infinite during an attack."""


@dataclass
class AttackResult:
    """What an attack returns; all images in pixel space, shaped like the input ([N, H, W] or [N, 1, H, W]).

    Attributes
    ----------
    attack : str
        "class-image", "targeted", "noise", "fgsm", "pgd" or "pgd-l2".
    images : ndarray
        The final images (for ``learn_noise``: the digit plus the noise).
    start : ndarray
        The starting images (the noise for a class image, the clean digit otherwise).
    perturbation : ndarray
        ``images - start`` (for ``learn_noise``: the learned noise itself).
    targets : ndarray [N]
        The class each image is pushed towards; -1 for an untargeted attack.
    labels : ndarray [N]
        The true class of each start image; -1 when unknown (noise).
    history : ndarray [steps, N]
        The objective per step, evaluated at the forward pass of that step
        (before its update): the target logit for class images and noise,
        ``logit_t - beta ||v - v0||^2`` for targeted, the cross-entropy
        (``-CE`` of the target when targeted) for FGSM / PGD.
    probabilities : ndarray [N, C]
        ``classifier.predict_proba(images)``.
    settings : dict
        The settings the attack ran with.
    """

    attack: str
    images: np.ndarray
    start: np.ndarray
    perturbation: np.ndarray
    targets: np.ndarray
    labels: np.ndarray
    history: np.ndarray
    probabilities: np.ndarray
    settings: dict = field(default_factory=dict)

    @property
    def targeted(self):
        return bool(np.all(self.targets >= 0))

    @property
    def predicted(self):
        return self.probabilities.argmax(axis=1)

    @property
    def success(self):
        """[N] bool: predicted as the target (targeted) or not as the true label (untargeted)."""
        if self.targeted:
            return self.predicted == self.targets
        return self.predicted != self.labels

    @property
    def confidence(self):
        """[N]: probability of the target (targeted) or of the predicted class (untargeted)."""
        cls = self.targets if self.targeted else self.predicted
        return self.probabilities[np.arange(len(cls)), cls]

    @property
    def success_rate(self):
        return float(np.mean(self.success)) if len(self.targets) else float("nan")

    @property
    def l2(self):
        """[N] L2 norm of the pixel-space perturbation."""
        d = self.perturbation.reshape(len(self.targets), -1).astype(np.float64)
        return np.sqrt(np.sum(d * d, axis=1))

    @property
    def linf(self):
        """[N] largest absolute pixel change."""
        return np.abs(self.perturbation.reshape(len(self.targets), -1)).max(axis=1).astype(np.float64)

    def summary(self):
        """Success rate, mean confidence, mean L2 and L-inf distance, as a dict of floats."""
        return {"success_rate": self.success_rate, "mean_confidence": float(np.mean(self.confidence)),
                "mean_l2": float(np.mean(self.l2)), "mean_linf": float(np.mean(self.linf))}


@dataclass
class TransferResult:
    """A learned noise added to many images (:func:`transfer_noise`)."""

    target: int
    labels: np.ndarray          # [N] true classes
    predicted_clean: np.ndarray  # [N]
    predicted_noisy: np.ndarray  # [N]
    target_probability: np.ndarray  # [N] probability of the target with the noise

    @property
    def accuracy_clean(self):
        return float(np.mean(self.predicted_clean == self.labels))

    @property
    def accuracy_noisy(self):
        return float(np.mean(self.predicted_noisy == self.labels))

    @property
    def transfer_rate(self):
        """Share of the images not of the target class that the noise makes the net call the target."""
        other = self.labels != self.target
        return float(np.mean(self.predicted_noisy[other] == self.target)) if other.any() else float("nan")


@dataclass
class RobustnessResult:
    """Accuracy on a test set under an attack of growing size (:func:`robustness_curve`)."""

    attack: str
    eps: np.ndarray       # [E] pixel units
    accuracy: np.ndarray  # [E]
    settings: dict = field(default_factory=dict)


def _finish(classifier, attack, images, start, perturbation, targets, labels, history, shape, settings,
            probabilities=True):
    """The :class:`AttackResult`, arrays back in the caller's ``shape``, with ``classifier.predict_proba(images)``
    (None with ``probabilities=False``)."""
    images = images.reshape(shape)
    return AttackResult(attack=attack, images=images, start=start.reshape(shape),
                        perturbation=perturbation.reshape(shape), targets=np.asarray(targets, dtype=np.int64),
                        labels=np.asarray(labels, dtype=np.int64), history=history,
                        probabilities=classifier.predict_proba(images) if probabilities else None,
                        settings=settings)
