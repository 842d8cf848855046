"""The explorer's web server: Flask, over :class:`npcnn.explore.api.Explorer`.

Why Flask: it is small, synchronous (one request at a time into numpy code is all we need), long and
well maintained (Pallets), its test client lets the tests call every route without a socket, and its
server (Werkzeug's) runs in a thread the tests can start and stop. It is imported only here, so the
library imports without it (``pip install npcnn[explore]``).

Safe by default: :func:`serve` binds 127.0.0.1 unless told otherwise; bodies over
:data:`~npcnn.explore.api.MAX_BODY` are refused (413) before they are read; every error, expected or
not, is a JSON ``{"error": "..."}`` with a 4xx (or 500) status, and the server keeps serving. The page's
three files are read once into memory and served by fixed routes: no request path ever becomes a file
path. The run folder is only read.
"""
import importlib.resources
import json
import threading
import webbrowser

from .api import MAX_BODY, ApiError, Explorer

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/explore.js": ("explore.js", "text/javascript; charset=utf-8"),
          "/explore.css": ("explore.css", "text/css; charset=utf-8")}


def _flask():
    try:
        import flask
    except ImportError:
        raise ImportError("npcnn explore needs Flask: pip install 'npcnn[explore]' (or pip install flask)") from None
    return flask


def _assets():
    folder = importlib.resources.files("npcnn.explore") / "static"
    return {route: ((folder / name).read_bytes(), mime) for route, (name, mime) in STATIC.items()}


def create_app(run_dir):
    """The Flask app for one run folder (opened, and its net loaded, now: errors surface at start-up)."""
    flask = _flask()
    from werkzeug.exceptions import HTTPException

    explorer = Explorer(run_dir)
    assets = _assets()
    app = flask.Flask("npcnn.explore", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["JSON_SORT_KEYS"] = False
    app.explorer = explorer

    def page(route):
        body, mime = assets[route]
        response = flask.Response(body, mimetype=mime.split(";")[0])
        response.headers["Content-Type"] = mime
        response.headers["Cache-Control"] = "no-store"
        return response

    for route in STATIC:
        app.add_url_rule(route, f"static:{route}", lambda route=route: page(route))

    def body():
        request = flask.request
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise ApiError(f"the request body is {request.content_length} bytes, larger than the {MAX_BODY}-byte "
                           f"limit", 413)
        data = request.get_data(cache=False)           # raises 413 past MAX_CONTENT_LENGTH, chunked too
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(f"the request body is not valid JSON ({e})") from None

    def reply(payload):
        return flask.Response(json.dumps(payload, allow_nan=False), mimetype="application/json")

    @app.get("/api/info")
    def info():
        return reply(explorer.info())

    for name in ("analyze", "pixel", "overlay", "attack"):
        app.add_url_rule(f"/api/{name}", f"api:{name}",
                         lambda name=name: reply(getattr(explorer, name)(body())), methods=["POST"])

    @app.get("/api/sample")
    def sample():
        args = flask.request.args
        return reply(explorer.sample(args.get("source", "samples"), args.get("index", "0")))

    @app.errorhandler(ApiError)
    def api_error(e):
        return flask.Response(json.dumps({"error": str(e)}), status=e.status, mimetype="application/json")

    @app.errorhandler(HTTPException)
    def http_error(e):
        message = {413: f"the request body is larger than the {MAX_BODY}-byte limit"}.get(e.code, e.description)
        return flask.Response(json.dumps({"error": f"{e.name}: {message}"}), status=e.code,
                              mimetype="application/json")

    @app.errorhandler(Exception)
    def internal_error(e):
        app.logger.exception("explore: request failed")
        return flask.Response(json.dumps({"error": f"internal error: {type(e).__name__}: {e}"}), status=500,
                              mimetype="application/json")

    return app


class Server:
    """Werkzeug's threaded server for the app, started in a background thread: ``url``, ``stop()``.
    What ``npcnn explore`` and the browser tests run; ``port`` 0 picks a free one; ``quiet`` drops the
    log line per request."""

    def __init__(self, app, host="127.0.0.1", port=0, quiet=False):
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_request(self, *args, **kwargs):     # no line per request (tests, benchmarks)
                pass

        self.httpd = make_server(host, port, app, threaded=True, request_handler=Quiet if quiet else None)
        self.host, self.port = host, self.httpd.server_port
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="npcnn-explore", daemon=True)

    @property
    def url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def serve(run_dir, host="127.0.0.1", port=8000, open_browser=True):
    """Serve the explorer for ``run_dir`` on ``host:port`` until Ctrl-C, opening the page in a browser."""
    server = Server(create_app(run_dir), host, port).start()
    print(f"npcnn explore: serving {run_dir} at {server.url} (Ctrl-C to stop)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print("npcnn explore: warning: reachable from other machines on this network", flush=True)
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.thread.join()
    except KeyboardInterrupt:
        print("\nnpcnn explore: stopped", flush=True)
    finally:
        server.stop()
