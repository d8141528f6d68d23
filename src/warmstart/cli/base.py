"""The ``warmstart`` command group and what every command shares: error handling, output, settings.

The commands live beside it, by subject (``pull.py``, ``manage.py``, ``kube.py``); each parses, calls
the API, prints. No logic of its own.

Exit codes: 0 success, 1 runtime failure (one line on stderr), 2 bad usage. Progress bars go to
stderr on a terminal only; ``--quiet`` or ``WARMSTART_QUIET=1`` silences them.

Everything printed for people goes through ``warmstart._redact``: error lines and log lines lose
secrets (URL query strings and credentials, tokens), and every line (tables too) shows control
characters as visible escapes, so text from a server cannot drive the terminal. ``--json`` output
escapes them by being JSON.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import sys

import click

from .. import errors
from .._redact import clean, for_terminal


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"warmstart: {for_terminal(record.getMessage())}"


def _setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    root = logging.getLogger("warmstart")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    root.propagate = False


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {for_terminal(message)}", err=True)
    sys.exit(code)


def _echo(text: str, *, err: bool = False) -> None:
    """Print lines for people: each line with its control characters escaped."""
    click.echo("\n".join(clean(line) for line in str(text).split("\n")), err=err)


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
        except sqlite3.Error as exc:  # the cache index translates these; a safety net all the same
            _fail(f"the cache index failed ({exc}); if it persists, run `warmstart verify --rebuild-index`")

    return wrapper


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=None, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="warmstart")
def main(verbose: int) -> None:
    """warmstart: pull model weights once at link speed, cache them, load them at hardware speed."""
    _setup_logging(verbose)




def _settings(max_size: str | None = None):
    import dataclasses

    from ..config import Settings, parse_size

    s = Settings.from_env()
    return dataclasses.replace(s, max_size=parse_size(max_size)) if max_size else s


def _manager(max_size: str | None = None):
    from .. import api

    return api.cache(settings=_settings(max_size))




def _when(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
