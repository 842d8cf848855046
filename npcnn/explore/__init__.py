"""``npcnn explore RUN_DIR``: draw a digit and watch your own net think, forward and backward, in a browser.

A small local web app over the Python API, in four rooms:

* :mod:`.drawing`  the pen's strokes -> an MNIST-style 28 x 28 image (plain NumPy, tested)
* :mod:`.trace`    one image through the net, every layer's output and the gradient arriving at it,
                   and one conv pixel explained (its products, forward and backward)
* :mod:`.api`      the JSON API as plain functions: checks every request, computes, answers with dicts
                   (no web framework needed to use or test it)
* :mod:`.server`   the Flask app that serves the page (``static/``) and routes ``/api/*`` to :mod:`.api`

Flask is imported only by :mod:`.server` (``pip install npcnn[explore]``), so ``import npcnn`` never
needs it.
"""


def create_app(run_dir):
    """The Flask app serving the explorer for ``run_dir`` (see :func:`npcnn.explore.server.create_app`)."""
    from .server import create_app as create

    return create(run_dir)


def serve(run_dir, host="127.0.0.1", port=8000, open_browser=True):
    """Serve the explorer until interrupted (see :func:`npcnn.explore.server.serve`)."""
    from .server import serve as run

    return run(run_dir, host=host, port=port, open_browser=open_browser)
