"""The ``warmstart`` command: parses, calls the API, prints. No logic of its own.

Exit codes: 0 success, 1 runtime failure (one line on stderr), 2 bad usage. Progress bars go to
stderr on a terminal only; ``--quiet`` or ``WARMSTART_QUIET=1`` silences them.
"""

from __future__ import annotations

import functools
import json
import logging
import sys

import click

from . import errors


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"warmstart: {record.getMessage()}"


def _setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    root = logging.getLogger("warmstart")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    root.propagate = False


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn):
    """Turn warmstart errors into one line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except errors.RefError as exc:
            _fail(str(exc), 2)
        except errors.ConfigError as exc:
            _fail(str(exc), 2)
        except errors.WarmstartError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted; partial downloads are kept, run the same command to resume", 130)
        except OSError as exc:
            _fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")

    return wrapper


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=None, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="warmstart")
def main(verbose: int) -> None:
    """warmstart: pull model weights once at link speed, cache them, load them at hardware speed."""
    _setup_logging(verbose)


@main.command()
@click.argument("ref")
@click.option("--revision", help="Branch, tag or commit (overrides @REV in REF).")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching GLOB (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching GLOB (repeatable).")
@click.option("--to", "to", type=click.Path(file_okay=False), help="Also make a plain directory of the files.")
@click.option("--copy", "link", flag_value="copy", help="With --to: copy the files.")
@click.option("--hardlink", "link", flag_value="hardlink", help="With --to: hardlink the files.")
@click.option("--symlink", "link", flag_value="symlink", default=True, help="With --to: symlinks (default).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the path.")
@click.option("-q", "--quiet", is_flag=True, default=None, help="No progress bar.")
@handle_errors
def pull(ref, revision, include, exclude, to, link, as_json, quiet) -> None:
    """Pull REF into the cache; prints the local snapshot directory as the last line.

    REF: hf://ORG/NAME[@REV] or ORG/NAME (Hugging Face Hub).
    """
    from . import api

    snap = api.pull(ref, revision=revision, include=include or None, exclude=exclude or None,
                    to=to, link=link or "symlink", quiet=quiet)
    if as_json:
        emit_json(snap.to_json())
    else:
        click.echo(str(snap.path))


@main.command("path")
@click.argument("what", default="home", type=click.Choice(["home", "hub", "blobs", "tmp"]))
@handle_errors
def path_cmd(what: str) -> None:
    """Print where the cache keeps things; `warmstart path hub` is for HF_HUB_CACHE."""
    from . import api

    click.echo(str(api.path(what)))


if __name__ == "__main__":  # pragma: no cover
    main()
