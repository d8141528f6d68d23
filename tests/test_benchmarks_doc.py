"""docs/benchmarks.md stays true to bench/ and bench/results/.

Every table and figure paragraph of the doc is preceded by a ``Source:`` paragraph naming a script in
``bench/``, the command it was run with, and the results file under ``bench/results/`` its figures come
from (or saying **awaiting rerun**). These tests check that every cited results file is committed and
parses, that every script and every flag of every command exists, that every table has a source, and
re-derive headline figures of the tables from the committed JSON.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS_RE = re.compile(r"bench/results/[\w.-]+\.json")
SCRIPT_RE = re.compile(r"bench/(\w+)\.py")
COMMAND_RE = re.compile(r"`(python bench/\w+\.py[^`]*)`")
SEPARATOR_RE = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")


@dataclass
class Source:
    line: int  # 1-based, where "Source:" starts
    text: str
    tables: list[list[list[str]]] = field(default_factory=list)  # the tables it covers: rows of cells

    @property
    def scripts(self) -> list[str]:
        return [f"bench/{m}.py" for m in SCRIPT_RE.findall(self.text)]

    @property
    def results(self) -> list[str]:
        return RESULTS_RE.findall(self.text)

    @property
    def commands(self) -> list[str]:
        return COMMAND_RE.findall(self.text)


def parse(doc: str) -> tuple[list[Source], list[tuple[int, str]]]:
    """The doc's Source paragraphs with the tables each covers, and the tables that have none
    (``(line, header)``). A table is covered by the last Source paragraph above it with no heading
    in between."""
    lines = doc.splitlines()
    sources: list[Source] = []
    orphans: list[tuple[int, str]] = []
    current: Source | None = None
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("#"):
            current = None
        elif ln.startswith("Source:"):
            start, text = i, [ln]
            while i + 1 < len(lines) and lines[i + 1].strip() and not lines[i + 1].startswith(("|", "#")):
                i += 1
                text.append(lines[i])
            current = Source(start + 1, " ".join(text))
            sources.append(current)
        elif ln.startswith("|") and i + 1 < len(lines) and SEPARATOR_RE.match(lines[i + 1]):
            start, rows = i, []
            while i < len(lines) and lines[i].startswith("|"):
                if not SEPARATOR_RE.match(lines[i]):
                    rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            if current is None:
                orphans.append((start + 1, lines[start]))
            else:
                current.tables.append(rows)
            continue
        i += 1
    return sources, orphans


# ------------------------------------------------------------------------------- re-derived figures


def _number(cell: str) -> float | None:
    m = re.search(r"-?\d+(?:\.\d+)?", cell.replace("**", "").replace("−", "-"))
    return float(m.group()) if m else None


def _cell(table: list[list[str]], row_prefix: str, header_part: str, exact: bool = False) -> float | None:
    """The number in the first row whose first cell (without **) starts with (or, ``exact``, is)
    ``row_prefix``, in the first column whose header contains ``header_part``."""
    header = table[0]
    col = next((j for j, h in enumerate(header) if header_part in h), None)
    for row in table[1:]:
        name = row[0].replace("**", "").strip()
        if col is not None and col < len(row) and (name == row_prefix if exact else name.startswith(row_prefix)):
            return _number(row[col])
    return None


Check = tuple[str, float | None, float, float]  # (what, doc's figure, derived figure, relative tolerance)


def derive_download(r: dict, table: list[list[str]]) -> list[Check]:
    c = r["compare"]
    out = []
    ws = c["rows"].get("warmstart pull (CLI process)")
    if ws and c.get("limit_s"):
        out.append(("warmstart pull % of link", _cell(table, "warmstart pull", "% of link"),
                    100 * c["limit_s"] / ws["seconds"], 0.02))
        for name, prefix in (("huggingface_hub.snapshot_download", "huggingface_hub"), ("aria2c -x16 -s16 -j16", "aria2c -x16")):
            if name in c["rows"]:
                out.append((f"{name} x", _cell(table, prefix, "x (peer"), c["rows"][name]["seconds"] / ws["seconds"], 0.02))
    return out


def derive_load(r: dict, table: list[list[str]]) -> list[Check]:
    ws = r["rows"]["warmstart"]
    out = []
    for name, prefix in (("safetensors.load_file", "safetensors.torch.load_file"), ("torch.load", "torch.load (no mmap)")):
        if name in r["rows"]:
            out.append((f"{name} warm ratio", _cell(table, prefix, "warm ratio"), r["rows"][name]["warm"] / ws["warm"], 0.05))
    out.append(("warmstart.load warm s", _cell(table, "warmstart.load", "warm s"), ws["warm"], 0.05))
    return out


def derive_sharing(r: dict, table: list[list[str]]) -> list[Check]:
    out = []
    for name in ("warmstart.load", "torch.load", "safetensors.load_file"):
        row = r["rows"].get(name)
        runs = r["runs"].get(name) or []
        if row and runs:  # the median of the committed runs, recomputed here, not copied from "rows"
            fb = r["file_bytes"][name]
            derived = statistics.median(sum(d["Pss"] for d in run["per_process"]) / fb for run in runs)
            out.append((f"{name} total PSS", _cell(table, name, "total PSS", exact=True), derived, 0.02))
    return out


DERIVERS: dict[str, Callable[[dict, list[list[str]]], list[Check]]] = {
    "download": derive_download, "load": derive_load, "sharing": derive_sharing}


def problems(doc: str, root: Path) -> list[str]:
    """Everything wrong between the doc and the repository, one line each (empty: all good)."""
    sources, orphans = parse(doc)
    out = [f"line {line}: table without a Source: line above it ({header[:60]})" for line, header in orphans]
    if not sources:
        out.append("no Source: lines at all")
    for cited in sorted(set(RESULTS_RE.findall(doc))):
        if not (root / cited).is_file():
            out.append(f"{cited} is cited but not in the repository")
    seen: dict[str, list] = {}  # results file -> [figures compared, figures no table showed]
    for s in sources:
        where = f"line {s.line}"
        if not s.scripts:
            out.append(f"{where}: Source names no bench/*.py script")
        for script in s.scripts:
            if not (root / script).is_file():
                out.append(f"{where}: {script} does not exist")
        if not s.commands:
            out.append(f"{where}: Source gives no `python bench/...` command")
        for cmd in s.commands:
            script = root / cmd.split()[1]
            if not script.is_file():
                out.append(f"{where}: {cmd.split()[1]} does not exist")
                continue
            code = script.read_text()
            for flag in re.findall(r"\s(--[\w-]+)", cmd):
                if f'"{flag}"' not in code:
                    out.append(f"{where}: {script.name} has no option {flag}")
        if not s.results and "awaiting rerun" not in s.text:
            out.append(f"{where}: Source cites no bench/results/*.json and is not marked awaiting rerun")
        for cited in s.results:
            path = root / cited
            if not path.is_file():
                continue  # reported above
            try:
                data = json.loads(path.read_text())
            except ValueError as e:
                out.append(f"{cited}: not JSON ({e})")
                continue
            bench = Path(cited).name.split("-")[0].removesuffix(".json")
            if not any(Path(cited).name.startswith(Path(sc).stem) for sc in s.scripts):
                out.append(f"{where}: {cited} is not a results file of {', '.join(s.scripts)}")
            derive = DERIVERS.get(bench)
            compared, missing = seen.setdefault(cited, [0, []])[0], seen[cited][1]
            for table in s.tables if derive else []:
                for what, doc_value, derived, tol in derive(data, table):
                    if doc_value is None:  # this table shows other figures of the same run
                        missing.append(f"{where}: {what}: no figure in any table to compare with {derived:.4g}")
                        continue
                    compared += 1
                    if abs(doc_value - derived) > tol * abs(derived) + 0.006:  # the doc rounds
                        out.append(f"{where}: {what}: the doc says {doc_value:g}, {cited} gives {derived:.4g}")
            seen[cited][0] = compared
    for cited, (compared, missing) in seen.items():  # some table citing it must show its headline figures
        bench = Path(cited).name.split("-")[0].removesuffix(".json")
        if bench in DERIVERS and not compared and missing:  # (a run without those figures derives none)
            out.extend(missing)
    return out


# ------------------------------------------------------------------------------------------- tests


def test_benchmarks_doc_matches_scripts_and_committed_results() -> None:
    assert problems(DOC.read_text(), ROOT) == []


def test_every_benchmark_section_has_sources() -> None:
    sources, _ = parse(DOC.read_text())
    named = {sc for s in sources for sc in s.scripts}
    for script in ("bench/download.py", "bench/load.py", "bench/sharing.py", "bench/convert.py",
                   "bench/sources.py", "bench/cache.py"):
        assert script in named, f"no Source: line names {script}"


NOT_CITED_HERE: set[str] = set()  # results files the doc need not cite (none: every committed one is cited)


def test_committed_results_are_small_and_cited() -> None:
    """The committed bench/results/*.json are what the doc cites (the latest run per benchmark), and
    none is huge. Untracked results of local runs are not looked at."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "bench/results"], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    doc = DOC.read_text()
    for rel in out.split():
        if not rel.endswith(".json") or rel in NOT_CITED_HERE:
            continue
        assert rel in doc, f"{rel} is committed but docs/benchmarks.md does not cite it"
        size = (ROOT / rel).stat().st_size
        assert size < 2 << 20, f"{rel} is {size} bytes: strip it"


# The checker itself, on a small doc of its own: it must catch what it claims to catch.

SAMPLE = """# Benchmarks

## Sharing

Source: `bench/sharing.py` · `python bench/sharing.py --size 1G --procs 4` · results: `bench/results/sharing-1.json`

| contender | file GB | total PSS (x file) |
|---|---:|---:|
| warmstart.load | 1.07 | 1.02 |
| torch.load | 1.07 | 4.00 |
"""


def _sample_repo(tmp_path: Path, pss: dict[str, float]) -> Path:
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "sharing.py").write_text((ROOT / "bench" / "sharing.py").read_text())
    fb = 1_000_000
    runs = {n: [{"per_process": [{"Pss": int(x * fb / 4)} for _ in range(4)]}] for n, x in pss.items()}
    data = {"file_bytes": {n: fb for n in pss}, "runs": runs, "rows": {n: {"total_Pss_x": x} for n, x in pss.items()}}
    (tmp_path / "bench" / "results" / "sharing-1.json").write_text(json.dumps(data))
    return tmp_path


def test_checker_accepts_a_true_doc(tmp_path: Path) -> None:
    root = _sample_repo(tmp_path, {"warmstart.load": 1.021, "torch.load": 3.999})
    assert problems(SAMPLE, root) == []


def test_checker_fails_when_a_cited_results_file_is_missing(tmp_path: Path) -> None:
    root = _sample_repo(tmp_path, {"warmstart.load": 1.02, "torch.load": 4.0})
    (root / "bench" / "results" / "sharing-1.json").unlink()
    assert any("bench/results/sharing-1.json is cited but not in the repository" in p for p in problems(SAMPLE, root))


def test_checker_fails_on_a_figure_the_results_do_not_give(tmp_path: Path) -> None:
    root = _sample_repo(tmp_path, {"warmstart.load": 1.30, "torch.load": 4.0})
    assert any("warmstart.load total PSS: the doc says 1.02" in p for p in problems(SAMPLE, root))


def test_checker_fails_on_a_table_without_source_an_unknown_option_or_script(tmp_path: Path) -> None:
    root = _sample_repo(tmp_path, {"warmstart.load": 1.02, "torch.load": 4.0})
    bad = SAMPLE.replace("--procs 4", "--workers 4") + "\n## Other\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    found = problems(bad, root)
    assert any("sharing.py has no option --workers" in p for p in found)
    assert any("table without a Source" in p for p in found)
    assert any("bench/nosuch.py does not exist" in p for p in problems(SAMPLE.replace("sharing.py", "nosuch.py"), root))


def test_checker_requires_results_or_awaiting_rerun(tmp_path: Path) -> None:
    root = _sample_repo(tmp_path, {"warmstart.load": 1.02, "torch.load": 4.0})
    bare = SAMPLE.replace(" · results: `bench/results/sharing-1.json`", "")
    assert any("not marked awaiting rerun" in p for p in problems(bare, root))
    assert problems(bare.replace("--procs 4`", "--procs 4` · results: **awaiting rerun**"), root) == []


@pytest.mark.parametrize("cmd", [s for src in parse(DOC.read_text())[0] for s in src.commands])
def test_every_doc_command_parses(cmd: str) -> None:
    """Each command's flags are accepted by the script's argument parser (``--help`` is not run: the
    option names are checked in the source, which imports nothing heavy)."""
    script = ROOT / cmd.split()[1]
    assert script.is_file()
    for flag in re.findall(r"\s(--[\w-]+)", cmd):
        assert f'"{flag}"' in script.read_text(), f"{script.name} has no option {flag}"
