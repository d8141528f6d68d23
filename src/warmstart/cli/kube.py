"""On a cluster: the node ``agent`` and the pod ``loader`` (llmaz, KServe)."""

from __future__ import annotations

import logging
import sys

import click

from .. import errors
from .base import handle_errors, main


@main.command("agent")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False),
              help="The agent's YAML config (models to keep warm, budgets); re-read when it changes.")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False), help="Unix socket (default <home>/agent.sock).")
@click.option("--listen", metavar="HOST:PORT", help="Also serve on TCP (health and metrics; the API with a token).")
@click.option("--token-file", type=click.Path(dir_okay=False), help="Bearer token that opens the API on TCP.")
@click.option("--poll-interval", type=float, default=5.0, show_default=True, help="Seconds between config checks.")
@handle_errors
def agent_cmd(config, socket_path, listen, token_file, poll_interval) -> None:
    """Run the node agent in the foreground: it owns the cache home and pulls for every client."""
    from pathlib import Path

    try:
        from ..agent import server
    except ImportError as exc:
        raise errors.ConfigError(f"`warmstart agent` needs the agent extra ({exc.name} is missing): "
                                 "pip install 'warmstart[agent]'") from None
    sys.exit(server.run(Path(config), socket_path=Path(socket_path) if socket_path else None, listen=listen,
                        token_file=Path(token_file) if token_file else None, poll_interval=poll_interval))


@main.command("loader")
@click.argument("uri", required=False)
@click.argument("dest", required=False, type=click.Path(file_okay=False))
@click.option("--dest", "dest_opt", type=click.Path(file_okay=False), default=None,
              help="Where the model goes (default /workspace/models, llmaz's model volume).")
@handle_errors
def loader_cmd(uri, dest, dest_opt) -> None:
    """Load a model into a pod's volume: llmaz's model-loader environment (MODEL_SOURCE_TYPE, MODEL_ID, ...)
    or KServe's storage-initializer arguments `URI DEST`; through the node agent when there is one."""
    from pathlib import Path

    from ..agent import loader

    logging.getLogger("warmstart").setLevel(logging.INFO)
    if uri:
        out = loader.run_kserve(uri, Path(dest or dest_opt or "/mnt/models"))
    else:
        out = loader.run_llmaz(Path(dest_opt or loader.DEFAULT_DEST))
    click.echo(str(out))
