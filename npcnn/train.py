"""Training and evaluation loops, the per-epoch History, and checkpoints."""
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import fast
from .data import batches
from .io import load_npz, save_npz
from .nn.loss import NonFiniteLossError
from .nn.module import Sequential
from .progress import progress_bar

FIELDS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds")
#: recorded only by some runs (adversarial training: the PGD accuracy of its watch batch after each epoch)
OPTIONAL_FIELDS = ("robust_accuracy",)


@dataclass
class History:
    """Per-epoch results; ``seconds`` is the training time of each epoch (evaluation excluded)."""

    train_loss: list = field(default_factory=list)
    train_accuracy: list = field(default_factory=list)
    test_loss: list = field(default_factory=list)
    test_accuracy: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    robust_accuracy: list = field(default_factory=list)   # adversarial training only, else empty

    def __len__(self):
        return len(self.train_loss)

    def append(self, **values):
        for name in FIELDS:
            getattr(self, name).append(float(values[name]))
        for name in OPTIONAL_FIELDS:
            if name in values:
                getattr(self, name).append(float(values[name]))

    def as_dict(self):
        d = asdict(self)
        return {k: v for k, v in d.items() if k in FIELDS or v}   # an optional field only when recorded

    @classmethod
    def from_dict(cls, d):
        return cls(**{name: [float(v) for v in d[name]] for name in FIELDS + OPTIONAL_FIELDS if name in d})


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    predictions: np.ndarray  # (N,) predicted classes
    probabilities: np.ndarray  # (N, C)


def evaluate(model, images, labels, *, normalization=None, batch_size=1000):
    """Loss, accuracy, predictions and class probabilities of ``model`` on a whole set.

    Runs in eval mode (BatchNorm uses its running statistics) and restores
    the previous mode, so it never changes the model. The model must end in
    LogSoftmax: the loss is the mean NLL.
    """
    was_training = model.training
    model.eval()
    try:
        n = len(labels)
        losses = np.empty(n)
        log_probs = []
        net = fast.plan(model)
        for start in range(0, n, batch_size):
            x, y = _batch_at(images, labels, start, batch_size, normalization)
            out = net.forward(x, inference=True)
            losses[start:start + len(y)] = -out[np.arange(len(y)), y]
            log_probs.append(out)
        log_probs = np.concatenate(log_probs)
    finally:
        model.train(was_training)
    predictions = log_probs.argmax(axis=1)
    return Evaluation(loss=float(losses.mean()), accuracy=float((predictions == labels).mean()),
                      predictions=predictions, probabilities=np.exp(log_probs))


def _batch_at(images, labels, start, size, normalization):
    for x, y in batches(images[start:start + size], labels[start:start + size], size, shuffle=False,
                        normalization=normalization):
        return x, y


def epoch_order_seed(seed, epoch):
    """The shuffle of epoch ``epoch`` depends only on (seed, epoch), so a resumed run sees the same batches."""
    return np.random.default_rng([seed, epoch])


class Checkpoint:
    """Model, optimiser state and history after a completed epoch, in one atomically written ``.npz``."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def exists(self):
        return os.path.isfile(self.path)

    def save(self, model, optimizer, history, epoch):
        arrays = {f"model.{k}": v for k, v in model.state_dict().items()}
        arrays.update({f"optim.{k}": v for k, v in optimizer.state_dict().items()})
        for name in FIELDS + OPTIONAL_FIELDS:
            arrays[f"history.{name}"] = np.array(getattr(history, name), dtype=np.float64)
        arrays["epoch"] = np.array(epoch)
        save_npz(self.path, arrays)

    def load(self, model, optimizer):
        """Restore model and optimiser in place; return (history, epochs completed)."""
        arrays = load_npz(self.path)
        model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")})
        optimizer.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("optim.")})
        history = History.from_dict({name: arrays[f"history.{name}"] for name in FIELDS + OPTIONAL_FIELDS
                                     if f"history.{name}" in arrays})
        return history, int(arrays["epoch"])


def fit(model, loss, optimizer, train_data, test_data, epochs, batch_size, *, normalization=None, seed=0,
        history=None, start_epoch=0, checkpoint=None, progress=True, log=print, perturb=None, after_epoch=None,
        lr_schedule=None):
    """Train ``model`` for ``epochs`` epochs (counting from ``start_epoch``) and return its History.

    Parameters
    ----------
    train_data, test_data : (images, labels)
        uint8 images [N, 28, 28] (or float [N, 1, H, W]) and integer labels.
    normalization : Normalization, optional
        Applied to every batch (train and test).
    seed : int
        Seeds the shuffle of every epoch; with the same initial weights the
        whole run is reproducible, and a resumed run equals an uninterrupted one.
    checkpoint : Checkpoint, optional
        Written at the end of every epoch.
    perturb : callable, optional
        ``perturb(x, y, epoch, step) -> x'``: replaces each (normalised) training batch before the step,
        e.g. by adversarial examples (:mod:`npcnn.experiments.adversarial_training`). It may switch the
        model to eval mode; the step itself always runs in train mode.
    after_epoch : callable, optional
        ``after_epoch(epoch) -> dict``: extra values for the History (e.g. ``robust_accuracy``), called
        after the epoch's evaluation and before its checkpoint.
    lr_schedule : callable, optional
        ``lr_schedule(t) -> lr``, ``t`` the progress in epochs when the step completes
        (``epoch + (step + 1) / batches``); sets ``optimizer.lr`` before every step
        (:func:`npcnn.optim.lr_schedule`). A function of the step alone: a resumed run follows it too.

    On Ctrl-C the epoch in progress is abandoned; the last completed epoch
    stays saved in the checkpoint, and KeyboardInterrupt propagates.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    history = history if history is not None else History()
    try:
        _fit_epochs(model, loss, optimizer, train_data, test_data, epochs, batch_size, normalization, seed,
                    history, start_epoch, checkpoint, progress, log, perturb, after_epoch, lr_schedule)
    except SystemError as e:
        # Ctrl-C landing inside a numba kernel call surfaces as SystemError("... returned a result
        # with an exception set") chained to the KeyboardInterrupt: report it as the interrupt it is.
        if isinstance(e.__cause__, KeyboardInterrupt) or isinstance(e.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise
    return history


def _fit_epochs(model, loss, optimizer, train_data, test_data, epochs, batch_size, normalization, seed, history,
                start_epoch, checkpoint, progress, log, perturb=None, after_epoch=None, lr_schedule=None):
    train_x, train_y = train_data
    net = fast.plan(model)          # the same layers and Parameters, fused where it pays (npcnn.fast)
    for epoch in range(start_epoch, epochs):
        model.train()
        order = batches(train_x, train_y, batch_size, shuffle=True, seed=epoch_order_seed(seed, epoch),
                        normalization=normalization)
        total_loss, correct, seen = 0.0, 0, 0
        bar = progress_bar(order, total=len(order), desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                   disable=not progress, leave=False, dynamic_ncols=True)
        start = time.perf_counter()
        for step, (x, y) in enumerate(bar):
            if perturb is not None:
                x = perturb(x, y, epoch, step)
                model.train()
            out = net.forward(x)
            try:
                value = loss.forward(out, y)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"epoch {epoch + 1}, batch {step + 1}: {e}") from None
            optimizer.zero_grad()
            _backward(net, loss.backward())
            if lr_schedule is not None:
                optimizer.lr = lr_schedule(epoch + (step + 1) / len(order))
            optimizer.step()
            total_loss += float(value) * len(y)
            correct += int((out.argmax(axis=1) == y).sum())
            seen += len(y)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
        seconds = time.perf_counter() - start
        bar.close()
        test = evaluate(model, *test_data, normalization=normalization)
        extra = after_epoch(epoch) if after_epoch is not None else {}
        history.append(train_loss=total_loss / seen, train_accuracy=correct / seen, test_loss=test.loss,
                       test_accuracy=test.accuracy, seconds=seconds, **extra)
        if checkpoint is not None:
            checkpoint.save(model, optimizer, history, epoch + 1)
        if log:
            log(f"epoch {epoch + 1:>2}/{epochs}  train loss {total_loss / seen:.4f} acc {correct / seen:.4f}  "
                f"test loss {test.loss:.4f} acc {test.accuracy:.4f}  {seconds:.1f} s "
                f"({seen / seconds:,.0f} img/s)" + "".join(f"  {k.replace('_', ' ')} {v:.4f}"
                                                           for k, v in extra.items()))
        if not math.isfinite(test.loss):
            raise NonFiniteLossError(f"epoch {epoch + 1}: test loss is {test.loss}")


def _backward(net, grad):
    """Backpropagate a training step. Nobody needs dL/dx of the images: a Sequential (or its fast
    plan, whose first fused step then skips it) is told so; any other Module just runs backward."""
    if isinstance(net, (Sequential, fast.FastSequential)):
        net.backward(grad, input_grad=False)
    else:
        net.backward(grad)
