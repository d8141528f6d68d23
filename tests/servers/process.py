"""Run the test Hub in its own process, so that a client measured against it does not share a GIL
with the server (the demo and the benchmarks need this; tests use the in-process fixture).

>>> with HubProcess([("sentence-transformers/all-MiniLM-L6-v2", None)], link=(20e6, 320e6, 0.02)) as hub:
...     print(hub.endpoint)                                                   # doctest: +SKIP

As a program: ``python -m tests.servers.process SPEC_JSON`` prints ``{"endpoint": …, "cdn": …}`` on
one line, then serves until its standard input closes. ``SPEC_JSON`` is
``{"repos": [[repo_id, dir_or_null], …], "link": [per_conn_bps, total_bps, latency_s] or null}``;
a ``null`` directory means the real MiniLM repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class HubProcess:
    """A :class:`~tests.servers.hub.HubServer` in a child process; ``endpoint`` once started."""

    def __init__(self, repos: list[tuple[str, str | os.PathLike | None]],
                 link: tuple[float | None, float | None, float] | None = None) -> None:
        self.spec = {"repos": [[r, str(d) if d else None] for r, d in repos], "link": list(link) if link else None}
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""
        self.cdn = ""

    def __enter__(self) -> HubProcess:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.servers.process", json.dumps(self.spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env, text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.__exit__()
            raise RuntimeError("the test Hub process did not start; run `python -m tests.servers.process` to see why")
        info = json.loads(line)
        self.endpoint, self.cdn = info["endpoint"], info["cdn"]
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            if self.proc.stdin:
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def _main(spec: dict) -> None:
    from tests.data.minilm import minilm_repo
    from tests.servers.hub import HubRepo, HubServer
    from tests.servers.shaping import Link

    repos = []
    for repo_id, directory in spec["repos"]:
        if directory is None:
            repos.append(minilm_repo(repo_id))
        else:
            files = {str(p.relative_to(directory)): p for p in sorted(Path(directory).rglob("*"))
                     if p.is_file() and p.name != ".digests.json"}  # the generator's own sidecar
            repos.append(HubRepo(repo_id, files))
    link = Link(*spec["link"]) if spec.get("link") else None
    with HubServer(repos=repos, link=link) as hub:
        print(json.dumps({"endpoint": hub.endpoint, "cdn": hub.cdn_endpoint}), flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin (or dies)


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
