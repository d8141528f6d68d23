"""The cache commands (one-line errors, --json everywhere) and leases on filesystems without locks."""

from __future__ import annotations

import errno
import fcntl
import json

from click.testing import CliRunner

from warmstart.api import pull
from warmstart.cache import leases
from warmstart.cache.layout import Layout
from warmstart.cli import main

MB = 1 << 20


def test_cache_commands_json_and_errors(make_model, settings):
    a, b = make_model(MB), make_model(MB)
    pull(a, settings=settings())
    pull(b, settings=settings())
    run = CliRunner().invoke
    rows = json.loads(run(main, ["ls", "--json"]).output)
    assert {r["model"] for r in rows} == {a, b} and all(r["size"] > MB for r in rows)
    assert "MODEL" in run(main, ["ls"]).output
    assert json.loads(run(main, ["du", "--json"]).output)["snapshots"] == 2
    assert json.loads(run(main, ["pin", a, "--json"]).output)[0]["pinned"] is True
    plan = json.loads(run(main, ["gc", "--max-size", "1M", "--dry-run", "--json"]).output)
    assert [x["what"].split("@")[0] for x in plan["actions"] if x["kind"] == "snapshot"] == [b]
    r = run(main, ["gc", "--max-size", "1M"])
    assert r.exit_code == 0 and "over the budget" in r.output and "freed" in r.output
    assert {x["model"] for x in json.loads(run(main, ["ls", "--json"]).output)} == {a}
    assert run(main, ["unpin", a]).exit_code == 0
    for args in (["rm", "hf://nobody/nothing"], ["pin", "hf://nobody/nothing"]):
        r = run(main, args)
        assert r.exit_code == 1 and r.output.count("\n") == 1 and "not in the cache" in r.output
    assert run(main, ["gc", "--max-size", "lots"]).exit_code == 2
    assert run(main, ["rm", a, "--json"]).exit_code == 0
    assert json.loads(run(main, ["ls", "--json"]).output) == []


def test_leases_without_working_locks_fall_back_to_pids(tmp_path, monkeypatch, caplog):
    lay = Layout(tmp_path)
    lay.ensure()

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lease = leases.acquire(lay, ["a" * 64])
    assert leases.leased_digests(lay) == {"a" * 64: [lease_pid()]}
    # a lease file left by a process that no longer exists is stale
    (lay.leases / "999999999-dead.lease").write_text(json.dumps({"pid": 999999999, "digests": ["b" * 64]}))
    assert "b" * 64 not in leases.leased_digests(lay)
    assert not (lay.leases / "999999999-dead.lease").exists()
    lease.release()


def lease_pid() -> int:
    import os

    return os.getpid()
