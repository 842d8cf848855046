"""The ``npcnn`` command: thin argument parsing over the library.

Each sub-command lives in its own module here with two functions,
``register(subparsers)`` (adds its parser) and ``run(args)`` (does the work);
``main`` turns the library's expected errors into one clear line and a
non-zero exit code instead of a traceback (set ``NPCNN_DEBUG=1`` to see it).
"""
import argparse
import importlib
import os
import sys

# sub-command name -> module in npcnn.cli
COMMANDS = {
    "train": "train",
    "attack": "attack",
    "inspect": "inspect",
    "occlusion": "inspect",
    "saliency": "inspect",
    "cam": "deeper",
    "embedding": "deeper",
    "ablation": "deeper",
    "examples": "deeper",
    "channels": "deeper",
    "report": "report",
    "reproduce": "reproduce",
    "explore": "explore",
    "import-torch": "exchange",
    "export": "exchange",
}


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="npcnn", description="Train, inspect and attack a CNN written from scratch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(f"npcnn.cli.{module}").register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_guarded(args.func, args)


def run_guarded(func, args):
    """Run a command; expected failures become ``npcnn: error: ...`` on stderr and exit code 1 (a bad flag is argparse's: its usage line and exit code 2)."""
    from ..data import ChecksumError, DatasetNotFoundError, DownloadError, IDXError
    from ..exchange.errors import MissingExtraError
    from ..models import ModelFileError
    from ..nn.loss import NonFiniteLossError
    from ..pipeline import StageFailed
    from ..report import ReportError
    from ..runs import RunDirError

    if os.environ.get("NPCNN_DEBUG"):
        func(args)  # full tracebacks, for developers
        return 0
    try:
        func(args)
    except KeyboardInterrupt:
        print("\nnpcnn: interrupted", file=sys.stderr)
        return 130
    except (StageFailed, ReportError, RunDirError, DatasetNotFoundError, DownloadError, ChecksumError, IDXError, ModelFileError, NonFiniteLossError,
            MissingExtraError, OSError, ValueError) as e:
        print(f"npcnn: error: {e or type(e).__name__}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
