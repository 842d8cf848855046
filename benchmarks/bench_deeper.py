"""Speed of "Looking deeper" (issue 18's targets), on a trained run and its test set.

    python benchmarks/bench_deeper.py --run runs/compare/plain           # all three
    python benchmarks/bench_deeper.py --run runs/compare/plain --no-tsne # without the 80 s t-SNE

1. Grad-CAM (conv2) + guided backprop of the report's 10 digits: median of ``--repeat`` runs. Target < 0.1 s.
2. The top 9 test patches of every channel of conv1 and conv2 (64 channels) over the whole test set
   (10,000 images). Target < 10 s.
3. t-SNE of the last hidden layer (500 units) of the whole test set, scikit-learn's TSNE with npcnn's
   settings (analysis.embedding.TSNE). Target < 90 s on 2 cores.

A trained run, because what the nets compute on does not change these costs much but the t-SNE's
iterations depend on how clustered the points are. Times are wall clock on whatever else the machine runs:
run it idle.
"""
import argparse
import json
import statistics
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a trained run folder (npcnn train --out ...)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-tsne", action="store_true")
    args = parser.parse_args()

    from npcnn import analysis
    from npcnn.runs import Run

    run = Run.open(args.run)
    clf = run.classifier
    images, labels = run.test_data()
    _, digits, _ = run.select(images, labels)
    results = {"images": len(images)}

    analysis.grad_cam(clf, digits, layer="conv2"), analysis.guided_backprop(clf, digits)   # warm-up (numba)
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        analysis.grad_cam(clf, digits, layer="conv2")
        analysis.guided_backprop(clf, digits)
        times.append(time.perf_counter() - start)
    results["grad_cam_and_guided_backprop_10_digits_s"] = statistics.median(times)

    start = time.perf_counter()
    channels = 0
    for layer in analysis.conv_layers(clf.model):
        channels += analysis.top_activations(clf, images, layer=layer, k=9).values.shape[0]
    results[f"top9_of_{channels}_channels_s"] = time.perf_counter() - start

    if not args.no_tsne:
        start = time.perf_counter()
        points = analysis.embed(analysis.penultimate(clf, images), method="tsne")
        results["tsne_s"] = time.perf_counter() - start
        results["tsne_5nn_accuracy"] = analysis.knn_accuracy(points, labels)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
