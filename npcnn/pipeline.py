"""``npcnn reproduce``: the whole report, stage by stage, resumable.

Each stage is one function of :mod:`npcnn.experiments` with its keyword
settings. ``DIR/pipeline.json`` records the settings of every finished
stage; a rerun skips a stage whose record matches and whose output exists,
so after an interruption (or a change of one setting) only what is missing
or changed runs again.
"""
import json
import os
import shutil
import time
from dataclasses import dataclass, field

from .io import read_json, write_json

# The report's settings, and the reduced ones of --quick (same stages, smaller numbers). The targeted
# attacks keep the report's 1,000 steps in --quick: at Adam's lr 1e-3 fewer do not reach the targets
# (200 steps: none of the 10 report pairs on the --quick net; 500: 4 of 10; 1,000: all). The defense table
# takes the first 2,000 test images and its curves 500: PGD-50 x 10 restarts alone took 20 minutes on all
# 10,000 against the robust net on 2 cores (`npcnn attack RUN defense --limit 10000` runs them all).
FULL = dict(limit=None, epochs=10, class_steps=15000, targeted_steps=1000, noise_steps=1500, sweep_limit=None,
            embedding_limit=2000, deeper_limit=None,
            eps=[0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3], robustness_attack="fgsm",
            defense_limit=2000, defense_curve_limit=500, defense_targeted="all")
QUICK = dict(limit=6000, epochs=2, class_steps=400, targeted_steps=1000, noise_steps=300, sweep_limit=None,
             embedding_limit=500, deeper_limit=2000,
             eps=[0.0, 0.1, 0.2, 0.3], robustness_attack="fgsm",
             defense_limit=300, defense_curve_limit=200, defense_targeted="report")

# the robust net: PGD-5 training (steps of 0.1 from a random start in the eps-0.3 box) with Wong et al.'s batch
# size and cyclic lr (npcnn.experiments.adversarial_training.ADVERSARIAL_RECIPE). Measured on the first 2,000
# test images (PGD-50 x 10 restarts / APGD-CE + DLR): 90.05 % / 88.25 % (on all 10,000: 92.61 % / 90.68 %, 99.04 %
# clean); FGSM training with the same recipe 80.95 % / 72.70 %, at a third of the training time.
ROBUST_TRAINING = dict(adversarial="pgd", attack_steps=5, attack_step_size=0.1)

# what a stage may fail with that the user can fix (anything else is a bug, and keeps its traceback)
EXPECTED_ERRORS = (ValueError, OSError, FloatingPointError)


@dataclass
class Stage:
    name: str
    function: callable   # a stage of npcnn.experiments
    target: str          # its run folder (the output folder for training)
    output: str          # a path that exists once the stage has finished
    settings: dict = field(default_factory=dict)   # its keyword settings, recorded in pipeline.json

    def key(self):
        """The settings as pipeline.json holds them (JSON types: lists, not tuples)."""
        return json.loads(json.dumps(self.settings))

    def call(self):
        """The stage as Python: ``experiments.occlusion('runs/reproduce/plain')``."""
        args = [repr(self.target)] + [f"{k}={v!r}" for k, v in self.settings.items()]
        return f"experiments.{self.function.__name__}({', '.join(args)})"


def stages(out, dataset, quick, data_dir=None, seed=0, defend=True):
    from . import experiments  # here, not at the top: `npcnn` imports this module for StageFailed alone
    from .analysis.attacks import SWEEP_BETAS, TARGETED
    from .experiments.noise import NOISE_LRS

    s = QUICK if quick else FULL
    plain, bn, adv = (os.path.join(out, v) for v in ("plain", "batchnorm", "adversarial"))
    train = dict(dataset=dataset, epochs=s["epochs"], seed=seed, limit=s["limit"], data_dir=data_dir)
    attacks = os.path.join(plain, "attacks")
    # lr recorded, not left to the default: a folder attacked at the old default (0.01) is attacked again
    targeted = dict(steps=s["targeted_steps"], lr=TARGETED["lr"])
    defence = [Stage("defend", experiments.train, adv, os.path.join(adv, "metrics.json"),
                     dict(train, **ROBUST_TRAINING))] if defend else []
    adv_attacks = os.path.join(adv, "attacks")
    # the robust net seen as the standard one was: its class images (the report's setting), saliency maps and
    # targeted attacks, and both nets under FGSM, PGD with restarts and APGD (npcnn.experiments.defense)
    robust = [
        Stage("defense", experiments.defense, adv, os.path.join(adv, "defense", "defense.npz"),
              dict(against=plain, limit=s["defense_limit"], curve_limit=s["defense_curve_limit"], seed=seed)),
        Stage("defend-saliency", experiments.saliency, adv, os.path.join(adv, "saliency", "saliency.npz")),
        Stage("defend-class-image", experiments.class_images, adv, os.path.join(adv_attacks, "class_image.npz"),
              dict(steps=s["class_steps"])),
        Stage("defend-targeted", experiments.targeted, adv, os.path.join(adv_attacks, "targeted.npz"),
              dict(pairs=s["defense_targeted"], **targeted)),
    ] if defend else []
    return [
        Stage("train", experiments.compare, out, os.path.join(out, "comparison.json"), train), *defence,
        Stage("inspect", experiments.inspect, plain, os.path.join(plain, "inspect")),
        Stage("occlusion", experiments.occlusion, plain, os.path.join(plain, "occlusion", "occlusion.npz")),
        Stage("saliency", experiments.saliency, plain, os.path.join(plain, "saliency")),
        Stage("cam", experiments.cam, plain, os.path.join(plain, "cam", "cam.npz")),
        Stage("embedding", experiments.embedding, plain, os.path.join(plain, "deeper", "embedding_tsne.npz"),
              dict(method="tsne", limit=s["embedding_limit"], seed=seed)),
        Stage("ablation", experiments.ablation, plain, os.path.join(plain, "deeper", "ablation_conv2.npz"),
              dict(layer="conv2", limit=s["deeper_limit"])),
        Stage("channels", experiments.channel_images, plain, os.path.join(plain, "deeper", "channels_conv2.npz"),
              dict(layer="conv2", seed=seed)),
        Stage("examples", experiments.dataset_examples, plain, os.path.join(plain, "deeper", "top_conv2.npz"),
              dict(layer="conv2", limit=s["deeper_limit"])),
        Stage("class-image", experiments.class_images, plain, os.path.join(attacks, "class_image.npz"),
              dict(steps=s["class_steps"])),
        Stage("class-image-regularized", experiments.class_images, plain,
              os.path.join(attacks, "class_image_regularized.npz"), dict(regularized=True, seed=seed)),
        Stage("targeted", experiments.targeted, plain, os.path.join(attacks, "targeted.npz"),
              dict(pairs="all", **targeted)),
        Stage("targeted-sweep", experiments.targeted_sweep, plain, os.path.join(attacks, "targeted_sweep.npz"),
              dict(pairs="report", betas=list(SWEEP_BETAS), **targeted)),
        Stage("noise", experiments.noise, plain, os.path.join(attacks, "noise.npz"),
              dict(steps=s["noise_steps"], seed=seed)),
        Stage("noise-sweep", experiments.noise_sweep, plain, os.path.join(attacks, "noise_sweep.npz"),
              dict(lrs=list(NOISE_LRS), steps=s["noise_steps"], limit=s["sweep_limit"], seed=seed)),
        Stage("boundary", experiments.boundary, plain, os.path.join(attacks, "boundary.npz"), dict(seed=seed)),
        Stage("robustness", experiments.robustness, plain, os.path.join(attacks, "robustness.npz"),
              dict(attack=s["robustness_attack"], eps=s["eps"], variants=[bn] + ([adv] if defend else []))),
        *robust,
    ]


class StageFailed(RuntimeError):
    pass


def reproduce(out, *, dataset="mnist", quick=False, data_dir=None, seed=0, defend=True, log=print):
    """Run every stage not already done with the same settings, then write ``out/report.html``. ``defend``
    trains a net on PGD-5 examples (``out/adversarial``, :data:`ROBUST_TRAINING`), adds it to the robustness
    curves and runs "Defending the net" (:mod:`npcnn.experiments.defense`, and the robust net's class images,
    saliency maps and targeted attacks)."""
    from .report import write_report

    os.makedirs(out, exist_ok=True)
    record_path = os.path.join(out, "pipeline.json")
    record = read_json(record_path) if os.path.isfile(record_path) else {}
    if record.get("dataset", dataset) != dataset:
        raise ValueError(f"{out} holds a {record['dataset']} reproduction; use another --out for {dataset}")
    record["dataset"] = dataset
    done = record.setdefault("stages", {})
    total = time.perf_counter()
    for stage in stages(out, dataset, quick, data_dir, seed, defend):
        previous = done.get(stage.name) or {}
        if previous.get("done") and previous.get("settings") == stage.key() and os.path.exists(stage.output):
            log(f"[{stage.name}] reused: its outputs exist and its settings match")
            continue
        if stage.name == "train" and previous and previous.get("settings") != stage.key():
            _clear_stale_training(out)  # other training settings: the old runs (and all built on them) go
        if stage.name == "defend" and not os.path.isfile(os.path.join(stage.target, "checkpoint.npz")):
            shutil.rmtree(stage.target, ignore_errors=True)   # nothing to continue: train it afresh
        start = time.perf_counter()
        log(f"[{stage.name}] {stage.call()}")
        try:
            if stage.name == "train":
                result = stage.function(stage.target, resume=True, progress=False, log=log, **stage.settings)
            elif stage.name == "defend":
                resume = os.path.isfile(os.path.join(stage.target, "checkpoint.npz"))
                result = stage.function(stage.target, resume=resume, progress=False, log=log, **stage.settings)
            else:
                result = stage.function(stage.target, **stage.settings)
        except EXPECTED_ERRORS as e:
            raise StageFailed(f"stage {stage.name} failed ({e or type(e).__name__}); fix the cause and rerun the "
                              f"same command: finished stages are reused") from e
        for line in result.describe().splitlines():
            log(f"[{stage.name}] {line}")
        done[stage.name] = {"settings": stage.key(), "done": True, "seconds": round(time.perf_counter() - start, 1)}
        write_json(record_path, record)
        log(f"[{stage.name}] done in {time.perf_counter() - start:.1f} s")
    path = write_report(out)
    log(f"[report] {path} ({time.perf_counter() - total:.0f} s in all)")
    return path


def _clear_stale_training(out):
    """Training settings changed (or were recorded by an older npcnn as a command line): the old runs, and
    everything computed from them, must go."""
    for name in ("plain", "batchnorm", "adversarial"):
        folder = os.path.join(out, name)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
    for name in ("comparison.json", "comparison.png"):
        if os.path.exists(os.path.join(out, name)):
            os.unlink(os.path.join(out, name))
