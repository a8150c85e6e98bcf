"""``lens-steer serve``: an OpenAI-compatible HTTP server over an engine, with steering vectors chosen per
request (:mod:`lens_steer.serve`). Everything is loaded and checked before the port opens."""

from __future__ import annotations

import argparse
import os

from lens_steer.cli.args import add_model_args, load_engine

API_KEY_ENV = "LENS_STEER_API_KEY"

GRAMMAR_HELP = ("steering spec: 'none' or VECTOR:LAYER:SIZE[:MODE][,...] where SIZE is a coefficient (4.5 or "
                "coeff=4.5) or scale=F (|c*v| = F x the layer's mean residual norm) and MODE continuous (default) "
                "or single; e.g. cot:15:scale=0.2:single")


def _serve_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    v = p.add_argument_group("steering")
    v.add_argument("--vector", action="append", default=[], metavar="NAME=DIR",
                   help="a steering vector requests may name (repeatable)")
    v.add_argument("--default-steering", default="none", metavar="SPEC",
                   help="applied to requests that carry no 'steering' (default none); " + GRAMMAR_HELP)
    v.add_argument("--allow-other-model", action="store_true",
                   help="serve vectors derived on another checkpoint of the same shape")
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    s.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}; unset: no key)")
    s.add_argument("--served-model-name", default=None, help="the model's name in the API (default: --model)")
    s.add_argument("--quiet", action="store_true", help="do not log each request")
    g = p.add_argument_group("generation defaults and batching")
    g.add_argument("--max-tokens", type=int, default=256,
                   help="tokens generated when a request names no max_tokens (default 256)")
    g.add_argument("--temperature", type=float, default=0.0,
                   help="temperature when a request names none (default 0: greedy)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed when a request names none")
    g.add_argument("--max-batch", type=int, default=32, help="most prompts per engine call (default 32)")
    g.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its engine call (default 5)")


def _serve(args) -> int:
    from lens_steer.serve.app import SERVED_ENGINES

    server = _SERVERS.get(args.engine) if args.engine in SERVED_ENGINES else None
    if server is None:
        raise ValueError(f"serve has no server for --engine {args.engine} yet; it serves "
                         + ", ".join(f"--engine {e} ({what})" for e, what in SERVED_ENGINES.items()))
    return server(args)


def _check_args(args) -> None:
    """Refuse a bad port, a malformed --vector or --default-steering before any model loads (every engine)."""
    from lens_steer.serve.steering_spec import parse_steering_text
    from lens_steer.serve.vectors import parse_vector_arg

    if not 0 <= args.port < 65536:
        raise ValueError(f"--port {args.port} is not a port number")
    for text in args.vector:
        parse_vector_arg(text)
    try:
        parse_steering_text(args.default_steering)
    except ValueError as exc:
        raise ValueError(f"--default-steering {args.default_steering!r}: {exc}") from None


def _serve_bridge(args) -> int:
    from lens_steer.serve.app import ServeApp, ServeSettings
    from lens_steer.serve.http import make_server
    from lens_steer.serve.vectors import load_served_vectors

    settings = ServeSettings(model_name=args.served_model_name or args.model, default_steering=args.default_steering,
                             max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                             max_batch=args.max_batch, batch_window_ms=args.batch_window_ms,
                             allow_other_model=args.allow_other_model)
    _check_args(args)
    engine = load_engine(args)
    vectors = load_served_vectors(args.vector, engine.info, allow_other_model=args.allow_other_model)
    app = ServeApp(engine, vectors, settings)
    try:
        try:
            server = make_server(app, args.host, args.port, api_key=args.api_key or None,
                                 log_requests=not args.quiet)
        except OSError as exc:
            raise ValueError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
        names = ", ".join(sorted(vectors)) or "none"
        print(f"lens-steer serve: {settings.model_name} on {server.url}/v1 (engine {engine.name}; vectors: {names}; "
              f"default steering: {app.default.text()}{'; API key required' if args.api_key else ''})", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        app.close()
    return 0


def _serve_vllm(args) -> int:
    from lens_steer.cli.args import engine_options
    from lens_steer.engines.registry import engine_spec
    from lens_steer.serve.vllm_server import VllmServeOptions, serve_vllm

    reason = engine_spec("vllm").unavailable()
    if reason:
        raise ValueError(f"--engine vllm: {reason}")
    _check_args(args)
    if args.device != "cpu" and args.device != "cuda":
        raise ValueError(f"serve --engine vllm runs on the machine's accelerator or CPU, not --device {args.device}")
    opts = VllmServeOptions(model=args.model, served_name=args.served_model_name or args.model,
                            vectors=tuple(args.vector), default_steering=args.default_steering, host=args.host,
                            port=args.port, api_key=args.api_key or None, dtype=args.dtype,
                            max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                            allow_other_model=args.allow_other_model, engine_options=engine_options(args),
                            quiet=args.quiet)

    def listening(url: str, started: dict) -> None:
        names = ", ".join(sorted(started["served"])) or "none"
        print(f"lens-steer serve: {opts.served_name} on {url}/v1 (engine vllm; vectors: {names}; default steering: "
              f"{started['default'].text()}{'; API key required' if opts.api_key else ''})", flush=True)

    serve_vllm(opts, listening)
    return 0


_SERVERS = {"bridge": _serve_bridge, "vllm": _serve_vllm}
"""The server of each engine in :data:`lens_steer.serve.app.SERVED_ENGINES`."""

COMMANDS = [
    ("serve", "serve the model over an OpenAI-compatible HTTP API, steering chosen per request", _serve_args,
     _serve),
]
