"""Serves a trained model over HTTP: a JSON API, a web page, metrics (see fmnist_jax/serving.py).

  python scripts/serve.py --workdir=checkpoints/pretrained/cnn    # then open http://127.0.0.1:8000/
  curl -F image=@boot.png http://127.0.0.1:8000/v1/classify
  python scripts/serve.py --workdir=DIR/model.jaxexport --port=8080 --max-batch=1   # no batching
  python scripts/serve.py --workdir=checkpoints/pretrained/cnn --runtime=onnx   # model.onnx

--workdir takes a release, a training workdir or a portable model file (scripts/export.py):
model.jaxexport run by jax (the default), or model.onnx run by onnxruntime (--runtime=onnx).
Stop it with Ctrl-C or SIGTERM: requests in flight are answered first (for --shutdown-seconds at
most). The --max-*, --*-seconds and --decode-pixels flags bound what clients can make it hold
(docs/reliability.md); the defaults keep the cnn under 1 GiB.
"""

from __future__ import annotations

from fmnist_jax import cli
from fmnist_jax.serving_limits import Limits

LIMIT_FLAGS = {  # Limits field: (type, help); the defaults are Limits'
    "request_bytes": (int, "largest request body, counted as received (default %(default)s)"),
    "inflight_bytes": (int, "request bodies held at once by all clients (default %(default)s; "
                            "503 past it)"),
    "body_seconds": (float, "most seconds a request body may take to arrive (default "
                            "%(default)s; 408)"),
    "image_pixels": (int, "largest image in pixels, read from its header (default %(default)s)"),
    "decode_pixels": (int, "pixels decoded at once by all requests (default %(default)s)"),
    "decode_wait_seconds": (float, "most seconds an image waits to be decoded (default "
                                   "%(default)s; 503)"),
    "connections": (int, "most open connections and requests (default %(default)s; 503 past it)"),
    "shutdown_seconds": (float, "most seconds SIGTERM waits for requests in flight (default "
                                "%(default)s)"),
}


def main(argv) -> None:
    parser = cli.Parser(description=__doc__)
    parser.add_argument("--workdir", required=True,
                        help="a release, a workdir, or an exported model.jaxexport or model.onnx")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                        "127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max-batch", type=int, default=128,
                        help="most images per model call (default 128; 1 turns batching off)")
    parser.add_argument("--batch-window-ms", type=float, default=0.0,
                        help="how long a batch waits for more requests after its first (default "
                             "0: a request that finds the model idle runs at once, those that "
                             "arrive meanwhile form the next batch)")
    cli.add_runtime_flag(parser)
    for field, (kind, help_text) in LIMIT_FLAGS.items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind,
                            default=getattr(Limits, field), help=help_text)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = parser.parse_args(argv)
    if args.batch_window_ms < 0:
        parser.error(f"--batch-window-ms must be 0 or more, got {args.batch_window_ms}")
    try:
        limits = Limits(**{field: getattr(args, field) for field in LIMIT_FLAGS})
    except ValueError as e:
        message = str(e)
        for field in LIMIT_FLAGS:
            message = message.replace(field, f"--{field.replace('_', '-')}")
        parser.error(message)
    from fmnist_jax import serving  # pylint: disable=import-outside-toplevel
    serving.serve(args.workdir, args.host, args.port, args.max_batch, args.batch_window_ms / 1000,
                  limits, args.runtime)

