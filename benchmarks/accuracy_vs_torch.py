"""Train the reference net in PyTorch with the report's settings, for the spread of its accuracy.

    python benchmarks/accuracy_vs_torch.py --seeds 0 1 2 [--batchnorm] [--json out.json]

The same data as npcnn (npcnn's loader, normalised by the training mean/std), the same net,
PyTorch's own initialisation and ``torch.optim.Adam(lr=1e-3)``, batch 64, 10 epochs, a fresh
shuffle every epoch. Prints the test accuracy after every epoch and the final one per seed, so
npcnn's final accuracy can be read against what PyTorch gets from the same recipe: one run's
last epoch moves by a few tenths of a percent from seed to seed.

``--npcnn-start`` removes the luck of the draw from the comparison: PyTorch then starts from the
weights ``npcnn.models.seed_cnn(rng=seed)`` gives and sees the batches in the order ``npcnn train
--seed`` uses, so a PyTorch run and an npcnn run with the same seed differ only in rounding.
"""
import argparse
import json
import time

import numpy as np


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batchnorm", action="store_true")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--npcnn-start", action="store_true",
                   help="start from npcnn's initial weights and batch order for each seed")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--data-dir", help="MNIST folder (default: npcnn's search, $NPCNN_DATA first)")
    p.add_argument("--json", help="write the per-seed histories here")
    return p.parse_args()


def reference_net(torch, batchnorm):
    nn = torch.nn
    bn = (lambda: [nn.BatchNorm2d(32)]) if batchnorm else (lambda: [])
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), *bn(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), *bn(),
        nn.Flatten(), nn.Linear(1568, 500), nn.ReLU(), nn.Linear(500, 10), nn.LogSoftmax(dim=1))


def accuracy(torch, net, x, y):
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    net.train()
    return float((pred == y).float().mean())


def npcnn_start(torch, net, seed, batchnorm):
    """Copy the initial weights of ``npcnn.models.seed_cnn(rng=seed)`` into ``net`` (same layer indices)."""
    from npcnn.models import seed_cnn
    state = seed_cnn(batchnorm=batchnorm, rng=seed).state_dict()
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})


def epoch_order(seed, epoch, n, npcnn_order, rng):
    """The indices of one epoch: npcnn's order for (seed, epoch), or a fresh permutation from ``rng``."""
    if npcnn_order:
        from npcnn.data import batches
        from npcnn.train import epoch_order_seed
        labels = np.arange(n)                     # batches() yields the labels: here, the indices
        return np.concatenate([y for _, y in batches(np.zeros((n, 1, 1, 1), np.float32), labels, 64,
                                                     seed=epoch_order_seed(seed, epoch))])
    return rng.permutation(n)


def train(torch, seed, batchnorm, epochs, data, npcnn_order=False):
    (xtr, ytr), (xte, yte) = data
    torch.manual_seed(seed)
    net = reference_net(torch, batchnorm)
    if npcnn_order:
        npcnn_start(torch, net, seed, batchnorm)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.NLLLoss()
    rng = np.random.default_rng(seed)
    accs = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = torch.from_numpy(epoch_order(seed, epoch, len(ytr), npcnn_order, rng))
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            loss_fn(net(xtr[idx]), ytr[idx]).backward()
            opt.step()
        accs.append(accuracy(torch, net, xte, yte))
        print(f"  seed {seed} epoch {epoch + 1}: test accuracy {accs[-1]:.2%}", flush=True)
    return {"seed": seed, "test_accuracy": accs, "seconds": time.perf_counter() - t0}


def main():
    args = parse()
    import torch

    from npcnn.data import Normalization, load_mnist, to_float_images
    if args.threads:
        torch.set_num_threads(args.threads)
    xtr, ytr = load_mnist("train", root=args.data_dir)
    xte, yte = load_mnist("test", root=args.data_dir)
    norm = Normalization.from_images(xtr)

    def tensors(x, y):
        return (torch.from_numpy(norm.to_normalized(to_float_images(x)).reshape(-1, 1, 28, 28).astype(np.float32)), torch.from_numpy(y.astype(np.int64)))

    data = (tensors(xtr, ytr), tensors(xte, yte))
    runs = []
    for seed in args.seeds:
        runs.append(train(torch, seed, args.batchnorm, args.epochs, data, args.npcnn_start))
        print(f"seed {seed}: final {runs[-1]['test_accuracy'][-1]:.2%} "
              f"({runs[-1]['seconds']:.0f} s)", flush=True)
    finals = [r["test_accuracy"][-1] for r in runs]
    start = " from npcnn's start" if args.npcnn_start else ""
    print(f"PyTorch{start}, {'with' if args.batchnorm else 'without'} BatchNorm, seeds {args.seeds}: final test "
          f"accuracy mean {np.mean(finals):.2%}, min {min(finals):.2%}, max {max(finals):.2%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batchnorm": args.batchnorm, "npcnn_start": args.npcnn_start, "runs": runs, "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
