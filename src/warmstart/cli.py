"""The ``warmstart`` command: parses, calls the API, prints. No logic of its own.

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

from . import errors
from ._redact import clean, for_terminal


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


@main.command()
@click.argument("ref")
@click.option("--revision", help="Branch, tag, commit, or S3 object version id (overrides @REV in REF).")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching GLOB (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching GLOB (repeatable).")
@click.option("--to", "to", type=click.Path(file_okay=False), help="Also make a plain directory of the files.")
@click.option("--copy", "link", flag_value="copy", help="With --to: copy the files.")
@click.option("--hardlink", "link", flag_value="hardlink", help="With --to: hardlink the files.")
@click.option("--symlink", "link", flag_value="symlink", default=True, help="With --to: symlinks (default).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the path.")
@click.option("-q", "--quiet", is_flag=True, default=None, help="No progress bar.")
@click.option("--max-size", metavar="SIZE", help="Cache budget for this pull (e.g. 200G); overrides WARMSTART_MAX_SIZE.")
@click.option("--tier", type=click.Choice(["disk", "memory"]), default=None,
              help="memory: also keep the model in the RAM tier (WARMSTART_MEMORY_DIR) and print that path.")
@click.option("--in-place", is_flag=True, help="Local paths: index the files where they are, no copy.")
@handle_errors
def pull(ref, revision, include, exclude, to, link, as_json, quiet, max_size, tier, in_place) -> None:
    """Pull REF into the cache; prints the local snapshot directory as the last line.

    REF: hf://ORG/NAME[@REV] or ORG/NAME (Hugging Face Hub), s3://BUCKET/PREFIX[@REV]
    (REV: a listing revision, or the version id of the object PREFIX names),
    oci://REGISTRY/REPO[:TAG|@DIGEST], https://HOST/PATH, file:///PATH or a local path.
    """
    from . import api

    snap = api.pull(ref, revision=revision, include=include or None, exclude=exclude or None,
                    to=to, link=link or "symlink", quiet=True if as_json else quiet, settings=_settings(max_size), tier=tier,
                    in_place=in_place)
    if as_json:
        emit_json(snap.to_json())
    else:
        click.echo(str(snap.path))  # a path the cache made (scripts read it as is)


@main.command("push-oci")
@click.argument("ref")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the pushed reference.")
@click.option("-q", "--quiet", is_flag=True, default=None, help="No progress bar.")
@handle_errors
def push_oci(ref, target, as_json, quiet) -> None:
    """Mirror REF (pulled first if not cached) to TARGET, oci://REGISTRY/REPOSITORY[:TAG], as a CNCF
    ModelPack artifact; prints oci://REGISTRY/REPOSITORY@sha256:DIGEST."""
    from . import api
    from .config import Settings
    from .oci_push import push_snapshot

    settings = Settings.from_env()
    result = push_snapshot(api.pull(ref, quiet=quiet, settings=settings), target, settings)
    if as_json:
        emit_json({"target": result.target, "digest": result.digest, "bytes_uploaded": result.uploaded,
                   "bytes_skipped": result.skipped})
    else:
        _echo(result.target)


@main.command("path")
@click.argument("what", default="home", type=click.Choice(["home", "hub", "blobs", "tmp"]))
@handle_errors
def path_cmd(what: str) -> None:
    """Print where the cache keeps things; `warmstart path hub` is for HF_HUB_CACHE."""
    from . import api

    click.echo(str(api.path(what)))


# ------------------------------------------------------------------------------ cache management


def _settings(max_size: str | None = None):
    import dataclasses

    from .config import Settings, parse_size

    s = Settings.from_env()
    return dataclasses.replace(s, max_size=parse_size(max_size)) if max_size else s


def _manager(max_size: str | None = None):
    from . import api

    return api.cache(settings=_settings(max_size))


def _size(n: int | None) -> str:
    from .cache.evict import human

    return human(n)


def _when(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


@main.command("ls")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
@handle_errors
def ls_cmd(as_json: bool) -> None:
    """List cached models: revision, size, bytes shared with other snapshots, last used, pinned, tier."""
    entries = _manager().ls()
    if as_json:
        emit_json([e.to_json() for e in entries])
        return
    rows = [("MODEL", "REVISION", "REFS", "SIZE", "SHARED", "LAST USED", "PIN", "TIER")]
    for e in entries:
        rows.append((e.model, e.revision[:12], ",".join(e.refs) or "-", _size(e.size), _size(e.shared),
                     _when(e.last_used), "pinned" if e.pinned else "-",
                     e.tier + (f" (in use: {','.join(map(str, e.in_use_by))})" if e.in_use_by else "")))
    rows = [tuple(clean(c) for c in r) for r in rows]  # escaped before measuring, so columns line up
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    _echo("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows))


@main.command("du")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@handle_errors
def du_cmd(as_json: bool) -> None:
    """Bytes used by the cache (and its RAM tier), and the budget."""
    d = _manager().du()
    if as_json:
        emit_json(d)
        return
    _echo(f"{_size(d['blob_bytes'])} in {d['blobs']} blobs, {d['snapshots']} snapshots, "
               f"{_size(d['tmp_bytes'])} partial; budget {_size(d['budget'])}  ({d['home']})")
    if "memory_dir" in d:
        _echo(f"RAM tier: {_size(d['memory_bytes'])} of {_size(d['memory_budget'])}  ({d['memory_dir']})")


def _plan_out(plan, as_json: bool, executed) -> None:
    if as_json:
        out = plan.to_json()
        if executed is not None:
            out["result"] = executed.to_json()
        emit_json(out)
        return
    _echo(plan.describe())
    if executed is not None:
        _echo(f"removed {executed.snapshots} snapshot(s) and {executed.blobs} blob(s), "
                   f"freed {_size(executed.freed)}")


@main.command("rm")
@click.argument("ref")
@click.option("--revision", help="Only this revision (default: every cached revision of REF).")
@click.option("--dry-run", is_flag=True, help="Print what would be removed.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def rm_cmd(ref: str, revision: str | None, dry_run: bool, as_json: bool) -> None:
    """Remove a cached model; refuses (naming the process) while one holds it."""
    m = _manager()
    plan = m.plan_rm(ref, revision)
    _plan_out(plan, as_json, None if dry_run else m.carry_out(plan))


@main.command("gc")
@click.option("--max-size", metavar="SIZE", help="Also evict LRU snapshots until the cache fits (e.g. 50G).")
@click.option("--dry-run", is_flag=True, help="Print the plan only.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def gc_cmd(max_size: str | None, dry_run: bool, as_json: bool) -> None:
    """Remove orphan blobs, stale partial downloads and stale leases; prints its plan, then carries it out."""
    m = _manager()
    plan = m.plan_gc(max_size)
    _plan_out(plan, as_json, None if dry_run else m.carry_out(plan))


@main.command("verify")
@click.argument("ref", required=False)
@click.option("--revision")
@click.option("--repair", is_flag=True, help="Fetch corrupt or missing blobs again; rebuild wrong views.")
@click.option("--rebuild-index", "rebuild", is_flag=True,
              help="First move a damaged index.db aside and rebuild it from the blobs and views on disk.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def verify_cmd(ref: str | None, revision: str | None, repair: bool, rebuild: bool, as_json: bool) -> None:
    """Re-hash cached blobs and check every view; corrupt blobs are quarantined (fetched again and wrong views
    rebuilt with --repair)."""
    m = _manager()
    rebuilt = m.rebuild_index() if rebuild else None
    if rebuilt is not None and not as_json:
        click.echo(f"rebuilt the index: {rebuilt.blobs} blobs, {rebuilt.snapshots} snapshots"
                   + (f" (damaged index kept as {rebuilt.moved_to})" if rebuilt.moved_to else ""))
    r = m.verify(ref, revision, repair=repair)
    if as_json:
        emit_json({**r.to_json(), "rebuilt": rebuilt.to_json()} if rebuilt else r.to_json())
    else:
        rate = r.bytes / r.seconds / 1e6 if r.seconds else 0.0
        _echo(f"verified {r.checked} blobs, {_size(r.bytes)} in {r.seconds:.2f}s ({rate:.0f} MB/s)")
        for d in r.corrupt:
            _echo(f"corrupt: {d} (quarantined)")
        for d in r.missing:
            _echo(f"missing: {d}")
        for s in r.repaired:
            _echo(f"repaired: {s}")
        for s in r.views:
            _echo(f"wrong view: {s}" + (" (rebuilt)" if s in r.views_repaired else ""))
    if not r.ok:
        views = f" and {len(r.views)} view entr{'y' if len(r.views) == 1 else 'ies'} not resolving to their blob" \
            if r.views else ""
        _fail(f"{len(r.corrupt)} corrupt and {len(r.missing)} missing blob(s){views}; run `warmstart verify --repair`")


def _pin(ref: str, revision: str | None, pinned: bool, as_json: bool) -> None:
    m = _manager()
    rows = m.pin(ref, revision, pinned=pinned)
    if as_json:
        emit_json([{"model": r.source, "revision": r.revision, "pinned": pinned} for r in rows])
    else:
        for r in rows:
            _echo(f"{'pinned' if pinned else 'unpinned'} {r.source}@{r.revision}")


@main.command("pin")
@click.argument("ref")
@click.option("--revision")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def pin_cmd(ref: str, revision: str | None, as_json: bool) -> None:
    """Never evict REF (its default revision, or the one given)."""
    _pin(ref, revision, True, as_json)


@main.command("unpin")
@click.argument("ref")
@click.option("--revision")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def unpin_cmd(ref: str, revision: str | None, as_json: bool) -> None:
    """Let REF be evicted again."""
    _pin(ref, revision, False, as_json)


@main.command("adopt")
@click.argument("hf_cache_dir", required=False, type=click.Path(file_okay=False))
@click.option("--dry-run", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def adopt_cmd(hf_cache_dir: str | None, dry_run: bool, as_json: bool) -> None:
    """Manage models huggingface_hub already downloaded, without copying (hardlinks)."""
    r = _manager().adopt(hf_cache_dir, dry_run=dry_run)
    if as_json:
        emit_json(r.to_json())
        return
    for a in r.adopted:
        _echo(f"{'would adopt' if dry_run else 'adopted'} {a}")
    for s in r.skipped:
        _echo(f"skipped {s}")
    _echo(f"linked {_size(r.linked_bytes)}, copied {_size(r.copied_bytes)}"
               + (f"; {_size(r.would_copy)} is on another filesystem and would be copied" if r.would_copy else ""))


# ------------------------------------------------------------------------------ conversion


@main.command("convert")
@click.argument("src")
@click.option("--recipe", "recipe", required=True, type=click.Path(dir_okay=False),
              help="Recipe file (YAML or JSON): rename, cast, transpose, reshape, fuse, drop, split, call.")
@click.option("--world-size", type=click.IntRange(min=1), help="Tensor-parallel ranks (if the recipe splits).")
@click.option("--shard-size", metavar="SIZE", help="Largest output file, e.g. 2GB (overrides the recipe).")
@click.option("--force", is_flag=True, help="Convert again even if a stored result exists.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the path.")
@handle_errors
def convert_cmd(src: str, recipe: str, world_size: int | None, shard_size: str | None, force: bool,
                as_json: bool) -> None:
    """Convert SRC (a ref or a directory) by a recipe once; print the stored result's directory."""
    from .api import convert

    c = convert(src, recipe, world_size=world_size, shard_size=shard_size, settings=_settings(), force=force)
    if as_json:
        emit_json(c.to_json())
        return
    _echo(f"{'converted' if c.converted else 'cached'}: {len(c.files)} files, {_size(c.size)}, "
               f"{c.world_size} rank(s), key {c.key[:12]}", err=True)
    click.echo(str(c.path))


# ------------------------------------------------------------------------------ Kubernetes


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
        from .agent import server
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

    from .agent import loader

    logging.getLogger("warmstart").setLevel(logging.INFO)
    if uri:
        out = loader.run_kserve(uri, Path(dest or dest_opt or "/mnt/models"))
    else:
        out = loader.run_llmaz(Path(dest_opt or loader.DEFAULT_DEST))
    click.echo(str(out))


if __name__ == "__main__":  # pragma: no cover
    main()
