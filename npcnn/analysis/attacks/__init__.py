"""Adversarial images: fooling a trained classifier through its own backward pass.

Every attack works on a batch (many images, many targets) with one forward
and one backward pass per step for the whole batch, via
:meth:`npcnn.classifier.Classifier.forward_backward` (input gradient only,
parameter gradients skipped).

Two families, one file each (the results and the checks of the settings have their own):

* **Adam on the input** (the report's section 4): :func:`class_images`,
  :func:`targeted` (and :func:`targeted_sweep` over beta), :func:`learn_noise`. The image (or the noise) is wrapped
  in a :class:`~npcnn.nn.Parameter` and handed to the library's one
  :class:`~npcnn.optim.Adam` with ``maximize=True``. In :mod:`.adam_loops`; a learned noise added
  to other images (:func:`transfer_noises`) in :mod:`.transfer`.
* **Sign / L2 steps in pixel space** (torchattacks' semantics):
  :func:`fgsm`, :func:`pgd`, and :func:`robustness_curve` over a test set.
  In :mod:`.gradient_attacks`; PGD with restarts and Auto-PGD (APGD, APGD-T) in :mod:`.strong`; all of
  them over a whole test set, with the checks for gradient masking, in :mod:`.evaluation`.
* **Distance to the boundary**: :func:`deepfool` (L2) and :func:`minimal_linf` (the smallest PGD budget,
  by bisection). In :mod:`.boundary`.
* :mod:`.result`: :class:`AttackResult` (and the transfer / robustness results),
  :class:`NonFiniteAttackError`. :mod:`.checks`: the checks of the settings.

The input space is explicit
---------------------------
``space="normalized"`` (the default of the Adam experiments, as in the
report) optimises ``z = (x - mean) / std``, the net's own input; the report's
step sizes refer to it. The gradient there is ``dL/dz = dL/dx * std``.
``space="pixel"`` optimises ``x`` itself. ``bounds=(low, high)`` are always
pixel values; when given, the image is clipped into them after every step
(in the normalised space the equivalent ``(bound - mean) / std``). Without
bounds nothing stops the image leaving [0, 1]: the report's experiments did
not bound it, and the results are kept as they are, in pixel units.
FGSM and PGD always work in pixel space within [0, 1], ``eps`` in pixel units.

Every result stores pixel-space images, whatever space the optimisation ran
in, and ``probabilities`` are exactly ``classifier.predict_proba(result.images)``.
"""
from .adam_loops import (CLASS_IMAGE, NOISE, SWEEP_BETAS, TARGETED, class_images, learn_noise, target_pairs, targeted,
                         targeted_sweep)
from .boundary import DEEPFOOL, MINIMAL_LINF, MinimalLinfResult, deepfool, minimal_linf
from .regularizers import REGULARIZED, class_mean_correlation, regularized
from .checks import (SPACES, _check_bounds, _check_eps, _check_lr, _check_nonnegative, _check_space, _check_steps,
                     check_classes)
from .evaluation import ATTACKS, DEFAULT_STEPS, ITERATIVE, masking_warnings, robustness_curve, run_attack
from .gradient_attacks import NORMS, fgsm, pgd
from .strong import LOSSES, apgd, apgdt, pgd_restarts
from .result import AttackResult, NonFiniteAttackError, RobustnessResult, TransferResult
from .transfer import add_noise, transfer_noise, transfer_noises

__all__ = [
    "class_images", "targeted", "targeted_sweep", "target_pairs", "learn_noise", "add_noise", "transfer_noise",
    "transfer_noises",
    "fgsm", "pgd", "run_attack", "robustness_curve", "check_classes", "deepfool", "minimal_linf", "pgd_restarts",
    "apgd", "apgdt", "masking_warnings", "DEFAULT_STEPS", "ITERATIVE", "LOSSES",
    "AttackResult", "TransferResult", "RobustnessResult", "MinimalLinfResult", "NonFiniteAttackError", "DEEPFOOL",
    "MINIMAL_LINF", "REGULARIZED", "class_mean_correlation", "regularized",
    "CLASS_IMAGE", "TARGETED", "SWEEP_BETAS", "NOISE", "ATTACKS", "SPACES", "NORMS",
]
