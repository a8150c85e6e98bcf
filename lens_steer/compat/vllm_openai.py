"""vLLM's own OpenAI-compatible server (its FastAPI app, its async engine with continuous batching), started with one
ASGI middleware of ours outermost and a step between the engine's start and the port's: every vLLM name the
server reaches is here, next to :mod:`lens_steer.compat.vllm` (whose version check it shares).

The sequence is vLLM 0.32's own ``run_server`` (``vllm.entrypoints.launchers.api_server.entry``), unrolled so that

* ``ready(engine_client)`` runs after the engine is built and before the socket is bound: lens_steer attaches its
  steering, reads the model's identity and checks the served vectors there, so a vector from another model stops
  the command before the port opens (vLLM itself binds first, for Ray's sake; no Ray here);
* the middleware ``ready`` names is added through vLLM's own ``--middleware`` option (an import path), last, so it
  is outermost and sees every request first.

Names used: ``make_arg_parser``, ``validate_parsed_serve_args`` and ``FlexibleArgumentParser`` (vLLM's own
``vllm serve`` flags, so every engine option a user knows works), ``build_async_engine_client``, ``build_app``,
``build_and_serve``, ``setup_server``, ``cli_env_setup`` (the spawn start method).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable

from lens_steer.compat import vllm as vllm_compat

__all__ = ["parse_serve_args", "run_openai_server"]


def parse_serve_args(argv: list[str]) -> argparse.Namespace:
    """vLLM's ``vllm serve`` arguments parsed from ``argv`` (``--model``, ``--dtype``, ``--port`` ...) and checked.

    Raises:
        ValueError: vLLM refuses a combination (one line).
    """
    if vllm_compat.VERSION is None:
        raise RuntimeError(f"vLLM is not installed (lens_steer needs vllm{vllm_compat.SUPPORTED}); `make setup-vllm`")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="lens-steer serve --engine vllm"))
    try:
        args = parser.parse_args(argv)
        validate_parsed_serve_args(args)
    except SystemExit as exc:  # argparse's own message was printed
        raise ValueError(f"vLLM refused the server arguments {' '.join(argv)}") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"vLLM refused the server arguments: {exc}") from None
    return args


def run_openai_server(args: argparse.Namespace,
                      ready: Callable[[Any], Awaitable[str]],
                      on_listen: Callable[[str], None]) -> None:
    """Run vLLM's OpenAI-compatible server until it is stopped (SIGINT / SIGTERM).

    Args:
        args: From :func:`parse_serve_args`.
        ready: ``await ready(engine_client)`` after the engine started and before the port is bound; returns the
            import path of an ASGI middleware class (vLLM builds it with the app alone). What it raises ends the
            command, the engine shut down.
        on_listen: Called with the server's base URL (``http://HOST:PORT``) once the socket is bound.
    """
    import uvloop
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup

    cli_env_setup()
    try:
        uvloop.run(_serve(args, ready, on_listen))
    except RuntimeError as exc:  # the engine process died starting; it logged why
        if "initialization failed" not in str(exc):
            raise
        raise ValueError(f"vLLM's engine did not start ({exc.args[0].split('.')[0]}): the reason is in vLLM's log "
                         "above (e.g. too little KV-cache memory: raise --gpu-memory-utilization)") from None


async def _serve(args, ready, on_listen) -> None:
    from vllm.entrypoints.launchers.api_server.entry import build_and_serve, build_async_engine_client
    from vllm.entrypoints.launchers.launcher import setup_server

    async with build_async_engine_client(args) as engine_client:
        args.middleware = [*(args.middleware or []), await ready(engine_client)]
        listen_address, sock = setup_server(args, reuse_port=False)
        try:
            sock.listen(2048)  # from here a client waits in the backlog until uvicorn accepts, not refused
            host, port = sock.getsockname()[:2]
            on_listen(f"http://{args.host or host}:{port}")
            shutdown = await build_and_serve(engine_client, listen_address, sock, args)
        except BaseException:
            sock.close()
            raise
    try:
        await shutdown
    finally:
        sock.close()
