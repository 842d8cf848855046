"""The report, stage by stage: one function per stage, what Python, ``npcnn`` and ``npcnn reproduce`` all call.

Each stage takes a run (a :class:`~npcnn.runs.Run` or the path of a run folder) and keyword settings whose
defaults are the report's; it checks every setting before computing or writing anything (a ``ValueError``
saying what is wrong), computes with :mod:`npcnn.analysis`, draws with :mod:`npcnn.plots`, writes its files
under ``RUN_DIR/<folder>/`` and returns a small result: what it computed, ``folder`` and ``files`` (the paths
it wrote) and ``describe()`` (the lines ``npcnn`` prints)::

    from npcnn import experiments

    experiments.train("runs/plain", epochs=1, limit=5000)          # a quick run folder
    r = experiments.occlusion("runs/plain", patch=7)               # RUN_DIR/occlusion/
    print(r.describe())
    r.occlusion.probability.shape                                  # (10, 11, 11): image, patch row, column

One module per section of the report:

* :mod:`.training`     2 training: :func:`train`, :func:`compare` (with and without BatchNorm); write RUN_DIR itself
* :mod:`.inside`       3 inside the net: :func:`inspect` (filters, feature maps), :func:`occlusion`,
                       :func:`saliency`; write ``inspect/``, ``occlusion/``, ``saliency/``, each whole or not at all
* :mod:`.cam`          3 looking deeper: :func:`cam` (Grad-CAM, guided backprop, guided Grad-CAM,
                       deconvolution); writes ``cam/``
* :mod:`.deeper`       3 looking deeper: :func:`embedding` (the test set as a map), :func:`ablation` (each conv
                       channel zeroed), :func:`dataset_examples` (the patches each channel likes),
                       :func:`channel_images` (the input each channel likes best); write ``deeper/``
* :mod:`.adversarial`  4 fooling the net: :func:`class_images`, :func:`targeted`, :func:`targeted_sweep`,
                       write ``attacks/``
* :mod:`.robustness`   the defence: :func:`robustness` (FGSM, PGD with restarts, APGD; checks for gradient
                       masking); writes ``attacks/``
* :mod:`.noise`        4 the learned noise: :func:`noise` (one per digit), :func:`noise_sweep` (its step size);
                       write ``attacks/``
* :mod:`.boundary`     4 how fragile each digit is: :func:`boundary` (DeepFool, the smallest PGD budget);
                       writes ``attacks/``
* :mod:`.common`       what they share: opening the run, its chosen test images, writing the folder
"""
from .adversarial import class_images, targeted, targeted_sweep
from .boundary import boundary
from .cam import cam
from .deeper import ablation, channel_images, dataset_examples, embedding
from .common import StageOutput
from .defense import defense
from .inside import inspect, occlusion, saliency
from .noise import noise, noise_sweep
from .robustness import robustness
from .training import TrainConfig, compare, compare_runs, train, train_run

__all__ = ["train", "compare", "inspect", "occlusion", "saliency", "cam", "embedding", "ablation", "dataset_examples",
           "channel_images", "class_images", "targeted", "targeted_sweep",
           "noise", "noise_sweep", "boundary", "robustness", "StageOutput", "TrainConfig", "train_run", "compare_runs"]
