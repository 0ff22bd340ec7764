"""Endpoints: `stackwise deploy` (with a traffic split), `endpoints` and `serve`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import JsonOpt, StackOpt, connect
from .render import print_deployment, print_json


def deploy(
    model_ref: Annotated[str, typer.Argument(help="Registered version: NAME:VERSION or NAME@ALIAS (e.g. chat@champion).")],
    traffic: Annotated[Optional[list[str]], typer.Option("--traffic", "-t", help="REF=PERCENT, repeatable (chat:2=90 --traffic chat:3=10); default: 100 to MODEL_REF.")] = None,
    endpoint: Annotated[Optional[str], typer.Option("--endpoint", "-e", help="Endpoint name (default: the stack's first).")] = None,
    stack: StackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Roll a registered model version onto the stack's endpoint, with a traffic split for A/B."""
    from ..deploy import parse_traffic_items

    split = parse_traffic_items(traffic)
    result = connect(stack).deploy(model_ref, traffic=split, endpoint=endpoint).as_dict()
    if as_json:
        print_json(result)
    else:
        print_deployment(result)


def endpoints(
    endpoint: Annotated[Optional[str], typer.Option("--endpoint", "-e", help="Endpoint name (default: the stack's first).")] = None,
    stats: Annotated[bool, typer.Option("--stats", help="Online metrics per version from the recorded answers and "
                                        "feedback (score, latency, refusal rate) with significance tests between "
                                        "versions.")] = False,
    stack: StackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the stack's endpoint: the model versions it serves and their traffic."""
    if stats:
        from .feedback import endpoint_stats, print_endpoint_stats

        platform = connect(stack)
        figures = endpoint_stats(platform.stack, platform.deployer.endpoint_name(endpoint))
        print_json(figures) if as_json else print_endpoint_stats(figures)
        return
    result = connect(stack).endpoint(endpoint).as_dict()
    if as_json:
        print_json(result)
    else:
        print_deployment(result)


def serve(
    port: Annotated[Optional[int], typer.Option("--port", "-p", help="TCP port (default: $AIP_HTTP_PORT, "
                                                "$SAGEMAKER_BIND_TO_PORT or 8080).")] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    endpoint: Annotated[Optional[str], typer.Option("--endpoint", "-e", help="Local endpoint name.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Serve this one model folder or URI instead "
                                                 "of the stack's deploy state (as inside a cloud container).")] = None,
    stack: StackOpt = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a --host beyond loopback with no API key "
                                           "(something in front authenticates callers: a cloud endpoint, a "
                                           "gateway). Keys that exist are still checked.")] = False,
    docs: Annotated[bool, typer.Option("--docs", help="Serve the API's /docs page and /openapi.json "
                                       "(off by default).")] = False,
) -> None:
    """Serve the local stack's deployed versions over HTTP (/v1/completions), split by their traffic;
    or one model (--model, or the model folder a SageMaker, Vertex AI or Azure ML container is given).
    With API keys (`stackwise keys create NAME`), predictions need 'Authorization: Bearer KEY'."""
    from ..errors import SpecError
    from ..serving import model_source, serve as run_server, serve_model

    if model and (endpoint or stack):
        raise SpecError("--model serves one model folder; --endpoint and --stack serve a stack's deploy state",
                        where="stackwise serve", fix="give --model, or --endpoint/--stack, not both")
    if port is not None and not 1 <= port <= 65535:
        raise SpecError(f"--port {port} is not a TCP port", where="stackwise serve --port",
                        fix="give a port from 1 to 65535, e.g. --port 8080")
    # Explicit --endpoint/--stack mean the deploy state even where a platform's model variables are set.
    source = None if (endpoint or stack) else model_source(model)
    _check_port_free(host, port)
    try:
        if source is not None:
            serve_model(source, host=host, port=port, insecure=insecure, docs=docs)
        else:
            run_server(connect(stack).stack, host=host, port=port, endpoint=endpoint, insecure=insecure, docs=docs)
    except SystemExit as exc:
        if exc.code != 3:  # uvicorn's "startup failed": it has logged why (a port taken since the check)
            raise
        raise SpecError(f"the server could not start on {host}:{port or 'its default port'} (see the line above)",
                        where="stackwise serve --host/--port",
                        fix="free the port or choose another with --port") from None


def _check_port_free(host: str, port: int | None) -> None:
    """Refuse, before any model loads, a port another process listens on (exit 2, not uvicorn's 3)."""
    import errno
    import socket

    from ..errors import SpecError
    from ..serving import listen_port

    port = listen_port(port)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise SpecError(f"cannot listen on {host!r}: {exc}", where="stackwise serve --host",
                        fix="give an address of this machine, e.g. 127.0.0.1 or 0.0.0.0") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            probe.bind(address)
        except OSError as exc:
            busy = exc.errno == errno.EADDRINUSE
            raise SpecError(f"port {port} on {host} is already in use" if busy else
                            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                            where="stackwise serve --host/--port",
                            fix="stop the process listening there (`ss -ltnp` or `lsof -i :PORT` names it), "
                                "or serve on another port with --port" if busy else
                                "give an address of this machine and a port you may use") from None
