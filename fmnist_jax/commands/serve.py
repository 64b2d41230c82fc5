"""Serves a trained model over HTTP: a JSON API, a web page, metrics (see fmnist_jax/serving.py).

  python scripts/serve.py --workdir=checkpoints/pretrained/cnn    # then open http://127.0.0.1:8000/
  curl -F image=@boot.png http://127.0.0.1:8000/v1/classify
  python scripts/serve.py --workdir=DIR/model.jaxexport --port=8080 --max-batch=1   # no batching

--workdir takes a release, a training workdir or a portable model file (scripts/export.py).
Stop it with Ctrl-C or SIGTERM: requests in flight are answered first.
"""

from __future__ import annotations

from fmnist_jax import cli


def main(argv) -> None:
    parser = cli.Parser(description=__doc__)
    parser.add_argument("--workdir", required=True,
                        help="a release, a workdir, or an exported model.jaxexport")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                        "127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max-batch", type=int, default=128,
                        help="most images per model call (default 128; 1 turns batching off)")
    parser.add_argument("--batch-window-ms", type=float, default=5.0,
                        help="how long a batch waits for more requests (default 5 ms)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = parser.parse_args(argv)
    if args.batch_window_ms < 0:
        parser.error(f"--batch-window-ms must be 0 or more, got {args.batch_window_ms}")
    from fmnist_jax import serving  # pylint: disable=import-outside-toplevel
    serving.serve(args.workdir, args.host, args.port, args.max_batch, args.batch_window_ms / 1000)

