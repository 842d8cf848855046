"""The report's section 2, training: one run folder per trained net.

:func:`train` trains the reference net with the report's settings and
writes everything the report shows about training into a run folder (see
:mod:`npcnn.runs` for the layout); :func:`compare` trains it with and
without BatchNorm and draws them side by side. Their settings are the
fields of :class:`TrainConfig`; :func:`train_run` and :func:`compare_runs`
take a ``TrainConfig`` itself.
"""
import os
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .. import plots  # noqa: F401  (selects the Agg backend)
from ..data import Normalization, load_dataset
from ..io import read_json, save_figure, write_json
from ..models import build_model, check_input_shape, count_neurons, count_parameters, model_name, save_model, summary_rows
from ..nn import NLLLoss
from ..optim import Adam, lr_schedule
from ..plots import training as training_plots
from ..runs import FORMAT
from ..train import Checkpoint, evaluate, fit
from .adversarial_training import ADVERSARIAL_RECIPE, AdversarialSettings, Perturb, Watch
from .common import StageOutput


@dataclass
class TrainConfig:
    """The settings of a training run; the defaults are the report's."""

    dataset: str = "mnist"
    data_dir: Optional[str] = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str = "constant"   # or "cyclic" (npcnn.optim.lr_schedule): 0 -> lr -> 0, Wong et al.'s
    seed: int = 0
    model: str = "seed-cnn"         # a name of npcnn.models.MODELS: the reference net, or one of the zoo
    batchnorm: bool = False          # the reference net only: BatchNorm2d after each max-pool
    limit: Optional[int] = None
    allow_sample: bool = False
    # adversarial training (npcnn.experiments.adversarial_training); None: the report's plain training
    adversarial: Optional[str] = None
    eps: float = 0.3
    attack_steps: Optional[int] = None
    attack_step_size: Optional[float] = None
    random_start: bool = True
    adversarial_fraction: float = 1.0

    def adversarial_settings(self):
        """The checked :class:`AdversarialSettings` (defaults filled in), or None for plain training."""
        if self.adversarial is None:
            plain = TrainConfig()
            given = [f for f in _ADVERSARIAL_FLAGS if getattr(self, f) != getattr(plain, f)]
            if given:
                flag = "no-random-start" if given[0] == "random_start" else given[0].replace("_", "-")
                raise ValueError(f"--{flag} applies only with --adversarial fgsm or pgd")
            return None
        return AdversarialSettings(self.adversarial, self.eps, self.attack_steps, self.attack_step_size,
                                   self.random_start, self.adversarial_fraction).resolved()

    def validate(self):
        if self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        lr_schedule(self.lr_schedule, self.lr, self.epochs)   # checks the name
        self.model = model_name(self.model)                   # a known name, in its registered spelling
        if self.batchnorm and self.model != "seed-cnn":
            raise ValueError(f"--batchnorm applies only to the reference net (seed-cnn), not to {self.model}")
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"--limit must be positive, got {self.limit}")
        if self.data_dir is not None and not os.path.isdir(self.data_dir):
            raise ValueError(f"data directory {self.data_dir} does not exist")
        self.adversarial_settings()
        return self


WATCH_FILE = "watch_best.npz"   # adversarial training: the best epoch's weights so far


class RunFolderError(ValueError):
    """The output folder cannot take this run (it is a file, or holds another run)."""


_ADVERSARIAL_FLAGS = ("eps", "attack_steps", "attack_step_size", "random_start", "adversarial_fraction")
# settings that must match for --resume to continue a run (epochs may grow)
_RESUME_KEYS = (("dataset", "batch_size", "lr", "lr_schedule", "seed", "model", "batchnorm", "limit", "adversarial")
                + _ADVERSARIAL_FLAGS)


def _checkpoint(out):
    """The run's checkpoint: only there while training is unfinished."""
    return Checkpoint(os.path.join(out, "checkpoint.npz"))


def prepare_folder(out, config, resume):
    """Check ``out`` can hold this run; return the config of the run being resumed, if any."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunFolderError(f"output folder {out} is a file")
    checkpoint = _checkpoint(out)
    finished = os.path.isfile(os.path.join(out, "metrics.json"))
    if resume:
        if not checkpoint.exists():
            what = "a finished run" if finished else "no checkpoint"
            raise RunFolderError(f"cannot resume: {out} holds {what}")
        old = read_json(os.path.join(out, "config.json"))
        plain = asdict(TrainConfig())   # a run written before a setting existed had its default
        diff = [k for k in _RESUME_KEYS if old.get(k, plain[k]) != asdict(config).get(k)]
        if diff:
            raise RunFolderError(f"cannot resume {out}: settings differ from the interrupted run ({', '.join(diff)})")
        if config.lr_schedule != "constant" and old.get("epochs") != config.epochs:
            raise RunFolderError(f"cannot resume {out} with {config.epochs} epochs: its {config.lr_schedule} lr "
                                 f"schedule was laid out over {old.get('epochs')}")
        return old
    if finished:
        raise RunFolderError(f"{out} already holds a finished run; choose another --out or delete it")
    if checkpoint.exists():
        raise RunFolderError(f"{out} holds an unfinished run; pass --resume to continue it, or choose another --out")
    return None


def load_train_test(config, log=print):
    """The dataset's train and test splits (train cut to ``limit``), and its info."""
    train_x, train_y, info = load_dataset(config.dataset, "train", root=config.data_dir,
                                          allow_sample=config.allow_sample, return_info=True)
    test_x, test_y = load_dataset(config.dataset, "test", root=config.data_dir, allow_sample=config.allow_sample)
    if config.limit is not None:
        train_x, train_y = train_x[:config.limit], train_y[:config.limit]
    if log:
        log(f"data: {info.name} from {info.source} ({info.path}): {len(train_y):,} train, {len(test_y):,} test images")
    return (train_x, train_y), (test_x, test_y), info


def train_run(config, out, *, resume=False, progress=True, log=print, data=None):
    """Train the net ``config.model`` (the reference net by default) per ``config`` into the run folder
    ``out``; return its metrics dict.

    Ctrl-C leaves the last completed epoch in ``out/checkpoint.npz``;
    ``resume=True`` continues from it and ends with the same weights and
    history as an uninterrupted run.
    """
    config.validate()
    prepare_folder(out, config, resume)
    train, test, info = data if data is not None else load_train_test(config, log)
    normalization = Normalization.from_images(train[0])
    images = np.shape(train[0])
    check_input_shape(config.model, (1, *images[1:]) if len(images) == 3 else images[1:], f"the {config.dataset} data")
    model = build_model(config.model, len(info.class_names), batchnorm=config.batchnorm, rng=config.seed)
    optimizer = Adam(model.parameters(), lr=config.lr)
    loss = NLLLoss()
    os.makedirs(out, exist_ok=True)
    checkpoint = _checkpoint(out)
    history, start_epoch = None, 0
    if resume:
        history, start_epoch = checkpoint.load(model, optimizer)
        if log:
            log(f"resuming {out} after epoch {start_epoch}")
    write_config(out, config, info, normalization)
    adversarial = config.adversarial_settings()
    perturb = watch = None
    if adversarial is not None:
        perturb = Perturb(model, normalization, adversarial, config.seed)
        watch = Watch(model, normalization, adversarial, *train, config.seed, os.path.join(out, WATCH_FILE))
        if not resume and os.path.exists(watch.path):
            os.unlink(watch.path)   # from an earlier run that never finished an epoch
    if log:
        variant = "with BatchNorm" if config.batchnorm else "without BatchNorm"
        what = f"the reference net {variant}" if config.model == "seed-cnn" else config.model
        log(f"training {what}: {count_parameters(model):,} parameters, "
            f"{config.epochs} epochs, batch {config.batch_size}, Adam lr {config.lr:g}"
            + (f" ({config.lr_schedule}: 0 -> {config.lr:g} -> 0)" if config.lr_schedule != "constant" else "")
            + (f"; {adversarial.describe()}" if adversarial else ""))
    history = fit(model, loss, optimizer, train, test, config.epochs, config.batch_size,
                  normalization=normalization, seed=config.seed, history=history, start_epoch=start_epoch,
                  checkpoint=checkpoint, progress=progress, log=log, perturb=perturb, after_epoch=watch,
                  lr_schedule=lr_schedule(config.lr_schedule, config.lr, config.epochs))
    extra = None
    if watch is not None:
        extra = {"adversarial": {**asdict(adversarial), **watch.restore_best(history, log)}}
    metrics = finish_run(out, config, model, normalization, history, test, info, extra)
    if watch is not None and os.path.exists(watch.path):
        os.unlink(watch.path)   # its weights are model.npz's now
    return metrics


def write_config(out, config, info, normalization):
    """``out/config.json``: the run's settings, where its data came from, its normalisation, the versions."""
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "config.json"), {
        "format": FORMAT, **asdict(config), "data_source": info.source, "data_path": os.path.abspath(info.path),
        "class_names": list(info.class_names), "normalization": normalization.as_dict(),
        "versions": library_versions(),
    })


def finish_run(out, config, model, normalization, history, test, info, extra=None):
    """Evaluate, then write the model, history, samples, figures and (last) metrics.json (with ``extra``)."""
    from sklearn.metrics import classification_report, confusion_matrix  # slow to import: only when needed

    names = list(info.class_names)
    result = evaluate(model, *test, normalization=normalization)
    labels = np.asarray(test[1], dtype=np.int64)
    save_model(os.path.join(out, "model.npz"), model, normalization, batchnorm=config.batchnorm,
               dataset=config.dataset, class_names=names, architecture=config.model)
    write_json(os.path.join(out, "history.json"), history.as_dict())
    samples = pick_samples(labels, result, config.seed, len(names))
    write_json(os.path.join(out, "samples.json"), samples)
    report = classification_report(labels, result.predictions, labels=list(range(len(names))), target_names=names,
                                   output_dict=True, zero_division=0)
    matrix = confusion_matrix(labels, result.predictions, labels=list(range(len(names))))
    h = history.as_dict()
    save_figure(training_plots.curves(h, "loss"), os.path.join(out, "loss.png"))
    save_figure(training_plots.curves(h, "accuracy"), os.path.join(out, "accuracy.png"))
    save_figure(training_plots.confusion_matrix(matrix, names), os.path.join(out, "confusion_matrix.png"))
    save_figure(training_plots.classification_report(report, names), os.path.join(out, "classification_report.png"))
    images = test[0][samples["indices"]].astype(np.float32) / 255
    save_figure(training_plots.sample_predictions(images, samples["labels"], samples["predicted"],
                                                  samples["probability"], names),
                os.path.join(out, "samples.png"))
    metrics = {
        "test_accuracy": result.accuracy,
        "test_loss": result.loss,
        "classification_report": report,
        "confusion_matrix": matrix.tolist(),
        "train_seconds": float(sum(history.seconds)),
        "seconds_per_epoch": list(history.seconds),
        "parameters": count_parameters(model),
        "neurons": count_neurons(model),
        "layers": summary_rows(model),
        "dataset": config.dataset,
        "data_source": info.source,
        "model": config.model,
        "batchnorm": config.batchnorm,
        "epochs": len(history),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(extra or {}),
    }
    write_json(os.path.join(out, "metrics.json"), metrics)
    if _checkpoint(out).exists():
        os.unlink(_checkpoint(out).path)
    return metrics


def library_versions():
    """The versions a run was made with (read from the installed packages: numba is imported by npcnn.kernels
    alone)."""
    import platform
    from importlib.metadata import version

    from .. import __version__

    return {"npcnn": __version__, "python": platform.python_version(), "numpy": np.__version__,
            **{name: version(name) for name in ("numba", "scikit-learn", "matplotlib")}}


def pick_samples(labels, result, seed, num_classes):
    """One random test image per class (seeded): the images every later analysis defaults to."""
    rng = np.random.default_rng([seed, 1234])
    indices = []
    for c in range(num_classes):
        candidates = np.flatnonzero(labels == c)
        if len(candidates) == 0:
            raise ValueError(f"the test set has no image of class {c}")
        indices.append(int(rng.choice(candidates)))
    pred = result.predictions[indices]
    return {
        "indices": indices,
        "labels": [int(labels[i]) for i in indices],
        "predicted": [int(p) for p in pred],
        "probability": [float(result.probabilities[i, p]) for i, p in zip(indices, pred)],
    }


VARIANTS = {"plain": False, "batchnorm": True}


def compare_runs(config, out, *, resume=False, progress=True, log=print):
    """Train without and with BatchNorm into ``out/plain`` and ``out/batchnorm``; draw them side by side."""
    config.validate()
    if config.model != "seed-cnn":
        raise ValueError(f"--compare trains the reference net with and without BatchNorm; it does not apply to "
                         f"{config.model}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunFolderError(f"output folder {out} is a file")
    data = load_train_test(config, log)
    results = {}
    for name, bn in VARIANTS.items():
        folder = os.path.join(out, name)
        variant = TrainConfig(**{**asdict(config), "batchnorm": bn})
        if os.path.isfile(os.path.join(folder, "metrics.json")) and resume:
            if log:
                log(f"{name}: finished earlier, reusing {folder}")
            results[name] = read_json(os.path.join(folder, "metrics.json"))
            continue
        can_resume = resume and _checkpoint(folder).exists()
        results[name] = train_run(variant, folder, resume=can_resume, progress=progress, log=log, data=data)
    histories = {n: read_json(os.path.join(out, n, "history.json")) for n in VARIANTS}
    seconds = {n: results[n]["train_seconds"] for n in VARIANTS}
    save_figure(training_plots.comparison(histories, seconds), os.path.join(out, "comparison.png"))
    summary = {n: {k: results[n][k] for k in ("test_accuracy", "test_loss", "train_seconds", "parameters")}
               for n in VARIANTS}
    write_json(os.path.join(out, "comparison.json"), summary)
    return summary


# --------------------------------------------------------------------------- the stages, with keyword settings

# what train_run writes into a run folder, in order (metrics.json last: it marks a finished run)
RUN_FILES = ("config.json", "model.npz", "history.json", "samples.json", "loss.png", "accuracy.png",
             "confusion_matrix.png", "classification_report.png", "samples.png", "metrics.json")


@dataclass
class TrainOutput(StageOutput):
    metrics: dict = None   # test_accuracy, test_loss, classification_report, confusion_matrix, ... (metrics.json)

    def describe(self):
        m = self.metrics
        return (f"test accuracy {m['test_accuracy']:.2%} after {m['epochs']} epochs "
                f"({m['train_seconds']:.0f} s of training); run folder: {self.folder}")


def with_recipe(settings):
    """``settings`` with, for adversarial training, :data:`ADVERSARIAL_RECIPE`'s batch size, lr and schedule
    where they are not given (None counts as not given)."""
    settings = {k: v for k, v in settings.items() if v is not None or k not in ADVERSARIAL_RECIPE}
    if settings.get("adversarial") is None:
        return settings
    return {**ADVERSARIAL_RECIPE, **settings}


def train(out, *, resume=False, progress=True, log=print, **settings):
    """Train a net (``model``: a name of :data:`npcnn.models.MODELS`, the reference net "seed-cnn" by
    default) into the run folder ``out``. ``settings`` are the fields of
    :class:`TrainConfig` (dataset, data_dir, epochs, batch_size, lr, lr_schedule, seed, model, batchnorm, limit,
    allow_sample, adversarial, eps, ...), the report's by default; with ``adversarial``, the batch size, lr
    and schedule not given are :data:`ADVERSARIAL_RECIPE`'s. ``resume=True`` continues an interrupted run.
    Returns a :class:`TrainOutput`."""
    out = os.fspath(out)
    metrics = train_run(TrainConfig(**with_recipe(settings)), out, resume=resume, progress=progress, log=log)
    return TrainOutput(folder=out, files=[os.path.join(out, f) for f in RUN_FILES], metrics=metrics)


@dataclass
class CompareOutput(StageOutput):
    summary: dict = None   # variant -> test_accuracy, test_loss, train_seconds, parameters (comparison.json)

    def describe(self):
        return "\n".join(f"{n:>9}: test accuracy {s['test_accuracy']:.2%}, training {s['train_seconds']:.0f} s"
                         for n, s in self.summary.items())


def compare(out, *, resume=False, progress=True, log=print, **settings):
    """Train the reference net without and with BatchNorm into ``out/plain`` and ``out/batchnorm``, and draw
    them side by side; ``settings`` as for :func:`train`. With ``resume=True`` a finished variant is reused
    and an interrupted one continued. Returns a :class:`CompareOutput`."""
    out = os.fspath(out)
    summary = compare_runs(TrainConfig(**with_recipe(settings)), out, resume=resume, progress=progress, log=log)
    files = [os.path.join(out, v, f) for v in VARIANTS for f in RUN_FILES]
    return CompareOutput(folder=out, files=files + [os.path.join(out, "comparison.png"),
                                                    os.path.join(out, "comparison.json")], summary=summary)
