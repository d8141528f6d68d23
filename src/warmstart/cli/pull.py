"""Getting models: ``pull``, ``push-oci``, ``path``, ``convert``."""

from __future__ import annotations

import click

from ..config import format_size
from .base import _echo, _settings, emit_json, handle_errors, main


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
    from .. import api

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
    from .. import api
    from ..config import Settings
    from ..oci_push import push_snapshot

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
    from .. import api

    click.echo(str(api.path(what)))


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
    from ..api import convert

    c = convert(src, recipe, world_size=world_size, shard_size=shard_size, settings=_settings(), force=force)
    if as_json:
        emit_json(c.to_json())
        return
    _echo(f"{'converted' if c.converted else 'cached'}: {len(c.files)} files, {format_size(c.size)}, "
               f"{c.world_size} rank(s), key {c.key[:12]}", err=True)
    click.echo(str(c.path))
