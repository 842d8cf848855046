"""``npcnn explore RUN_DIR``: a local web page to draw a digit and watch the run's net, forward and backward.

Serves :mod:`npcnn.explore` on 127.0.0.1 (``--host`` to change it, ``--port`` 0 for any free port) and
opens the page in the default browser unless ``--no-browser``. Needs Flask (``pip install npcnn[explore]``).
The run folder is only read.
"""
import argparse
import sys


def port_number(text):
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, got {text}")
    return value


def register(sub):
    p = sub.add_parser("explore", help="draw a digit and watch the net think, forward and backward, in a browser",
                       description="Start a local web page on a trained run: draw a digit (or pick a test image), "
                                   "see every layer's activations and the gradients of a class's logit, click a "
                                   "conv pixel to see its products, show occlusion / saliency / Grad-CAM, and fool "
                                   "the net with a targeted attack. Needs Flask: pip install 'npcnn[explore]'.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `npcnn train` (only read)")
    p.add_argument("--port", type=port_number, default=8000, help="port to listen on (default 8000; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    p.set_defaults(func=run)


def run(args):
    from ..explore import serve

    try:
        serve(args.run_dir, host=args.host, port=args.port, open_browser=not args.no_browser)
    except ImportError as e:
        print(f"npcnn: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
