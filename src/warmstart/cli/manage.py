"""Managing the cache: ``ls``, ``du``, ``rm``, ``gc``, ``verify``, ``pin``, ``unpin``, ``adopt``."""

from __future__ import annotations

import click

from .._redact import clean
from ..config import format_size
from .base import _echo, _fail, _manager, _when, emit_json, handle_errors, main


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
        rows.append((e.model, e.revision[:12], ",".join(e.refs) or "-", format_size(e.size), format_size(e.shared),
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
    _echo(f"{format_size(d['blob_bytes'])} in {d['blobs']} blobs, {d['snapshots']} snapshots, "
               f"{format_size(d['tmp_bytes'])} partial; budget {format_size(d['budget'])}  ({d['home']})")
    if "memory_dir" in d:
        _echo(f"RAM tier: {format_size(d['memory_bytes'])} of {format_size(d['memory_budget'])}  ({d['memory_dir']})")


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
                   f"freed {format_size(executed.freed)}")


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
        _echo(f"verified {r.checked} blobs, {format_size(r.bytes)} in {r.seconds:.2f}s ({rate:.0f} MB/s)")
        for d in r.corrupt:
            _echo(f"corrupt: {d} (quarantined)")
        for d in r.missing:
            _echo(f"missing: {d}")
        for s in r.repaired:
            _echo(f"repaired: {s}")
        for s in r.views:
            _echo(f"wrong view: {s}" + (" (rebuilt)" if s in r.views_repaired else ""))
        for d in r.memory_corrupt:
            _echo(f"corrupt RAM tier copy: {d} (dropped)")
    if not r.ok:
        views = f" and {len(r.views)} view entr{'y' if len(r.views) == 1 else 'ies'} not resolving to their blob" \
            if r.views else ""
        ram = f" and {len(r.memory_corrupt)} corrupt RAM tier cop{'y' if len(r.memory_corrupt) == 1 else 'ies'} " \
            "(dropped)" if r.memory_corrupt else ""
        _fail(f"{len(r.corrupt)} corrupt and {len(r.missing)} missing blob(s){views}{ram}; "
              "run `warmstart verify --repair`")


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
    _echo(f"linked {format_size(r.linked_bytes)}, copied {format_size(r.copied_bytes)}"
               + (f"; {format_size(r.would_copy)} is on another filesystem and would be copied" if r.would_copy else ""))
