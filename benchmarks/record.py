"""Benchmark records: one JSON file per benchmark run, with what is needed to judge its figures.

A record holds the benchmark's name and size, the exact command, the commit (and whether the tree
had uncommitted changes), the UTC date, the machine (cores, memory, CPU model and its vector
flags), the threads, the versions of the libraries that matter, the load average before and after
the run, and every figure the benchmark script wrote (its own JSON, rounds included).

:func:`render_results` rewrites the blocks between ``<!-- table: NAME -->`` and ``<!-- /table -->``
in ``benchmarks/RESULTS.md`` from the newest full-size record of each benchmark; the prose around
the blocks stays hand-written. Every table line shows the load average its figures were measured at;
one measured above 1.0 per core is marked with a dagger and a footnote under its table.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
FORMAT = 1
REQUIRED_KEYS = (
    "format",
    "benchmark",
    "size",
    "command",
    "commit",
    "date",
    "machine",
    "threads",
    "versions",
    "load_before",
    "load_after",
    "wall_s",
    "figures",
)
LIBRARIES = (
    "densekit",
    "torch",
    "faiss-cpu",
    "faiss-gpu",
    "numpy",
    "transformers",
    "sentence-transformers",
    "pyserini",
    "pymilvus",
    "milvus-lite",
    "bm25s",
    "rank-bm25",
)
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16")
DAGGER = "†"


def cpu_info() -> tuple[str, list[str]]:
    """The CPU model name and which of :data:`CPU_FLAGS` it has (from /proc/cpuinfo on Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, [f for f in CPU_FLAGS if f in flags]


def memory_gb() -> float:
    """Total physical memory in GiB."""
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)


def gpus() -> list[str]:
    """The GPUs nvidia-smi lists (name, memory), none where it is missing."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


def machine() -> dict:
    model, flags = cpu_info()
    return {
        "cores": os.cpu_count(),
        "memory_gb": memory_gb(),
        "cpu_model": model,
        "cpu_flags": flags,
        "gpus": gpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    """Installed versions of :data:`LIBRARIES` (from package metadata: nothing is imported)."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def commit() -> dict:
    """The checked-out commit and whether tracked files differ from it; in a copy without git (a lent
    GPU machine) the commit that benchmarks/device/run.sh was given as DENSEKIT_COMMIT, dirty unknown."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    sha = git("rev-parse", "HEAD")
    if not sha and os.environ.get("DENSEKIT_COMMIT"):
        return {"sha": os.environ["DENSEKIT_COMMIT"], "dirty": None}
    return {"sha": sha or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if sha else None}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def new_record(benchmark: str, size: str, command: list[str], threads: int | None) -> dict:
    """A record's conditions, taken just before the run; the caller adds the figures and the load after."""
    return {
        "format": FORMAT,
        "benchmark": benchmark,
        "size": size,
        "command": command,
        "commit": commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "threads": threads,
        "environment": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ},
        "versions": versions(),
        "load_before": load_average(),
    }


def missing_keys(record: dict) -> list[str]:
    """What a complete record lacks: absent keys, and figures that are empty."""
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if not record.get("figures"):
        missing.append("figures (empty)")
    return missing


def write_record(record: dict, directory: Path) -> Path:
    """Write `record` as `<benchmark>-<size>-<UTC timestamp>.json` in `directory` (atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = record["date"].replace("-", "").replace(":", "")
    path = directory / f"{record['benchmark']}-{record['size']}-{stamp}.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def newest_records(directory: Path, size: str = "full") -> dict[str, dict]:
    """The newest record of each benchmark at `size` in `directory` (by the date inside)."""
    newest: dict[str, dict] = {}
    for path in sorted(directory.glob(f"*-{size}-*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("size") != size:
            continue
        name = record["benchmark"]
        if name not in newest or record["date"] > newest[name]["date"]:
            newest[name] = {**record, "_path": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)}
    return newest


# ----------------------------------------------------------------------------- rendering


def loaded(record: dict) -> bool:
    """Whether the run saw a load average above 1.0 per core (1-minute average, before or after)."""
    cores = record["machine"]["cores"] or 1
    return max(record["load_before"][0], record["load_after"][0]) / cores > 1.0


def load_cell(record: dict) -> str:
    """`2.31 / 3.05` (1-minute load average before / after), with the dagger when loaded."""
    text = f"{record['load_before'][0]:.2f} / {record['load_after'][0]:.2f}"
    return text + (DAGGER if loaded(record) else "")


def provenance(record: dict) -> str:
    """The line under a rendered table: where the figures come from and under which conditions."""
    m = record["machine"]
    sha = (record["commit"]["sha"] or "unknown")[:10] + (" (uncommitted changes)" if record["commit"]["dirty"] else "")
    lines = [
        f"Record `{record['_path']}`: {record['date']}, commit {sha}, {m['cores']} cores ({m['cpu_model']}; "
        f"{', '.join(m['cpu_flags']) or 'no AVX'}), {m['memory_gb']} GiB, "
        + (f"GPU {'; '.join(m['gpus'])}, " if m.get("gpus") else "")
        + f"{record['threads']} threads, "
        f"load average (1 min) {load_cell(record)} before / after, {record['wall_s']:.0f} s wall"
        + (f", {record['cpu_s']:.0f} s CPU." if record.get("cpu_s") is not None else "."),
        "",
        "```text",
        shlex.join(a.removeprefix(f"{REPO}/") for a in record["command"]),  # paths in the repository, relative
        "```",
    ]
    if loaded(record):
        lines += [
            "",
            f"{DAGGER} measured at a load average above 1.0 per core: other work shared the machine, so times "
            "and rates are noisy; read the ratios measured in the same run.",
        ]
    return "\n".join(lines)


def with_load_column(table: str, record: dict) -> str:
    """Every Markdown table in `table` with a last column: the load average its figures were measured at
    (not a table whose header has a load column already: its rows give their own, e.g. one per seed)."""
    lines, previous, own = [], "", False
    for line in table.splitlines():
        if line.startswith("|") and line.rstrip().endswith("|"):
            if not previous.startswith("|"):
                own = "load avg" in line
                if not own:
                    line += " load avg (1 min) before / after |"
            elif not own:
                separator = set(line.replace("|", "").strip()) <= set("-: ")
                line += "---|" if separator else f" {load_cell(record)} |"
        lines.append(line)
        previous = line
    return "\n".join(lines)


def replace_block(text: str, name: str, body: str) -> tuple[str, bool]:
    """`text` with the block between `<!-- table: name -->` and `<!-- /table -->` replaced by `body`."""
    pattern = re.compile(rf"(<!-- table: {re.escape(name)} -->\n)(.*?)(<!-- /table -->)", re.DOTALL)
    replaced, count = pattern.subn(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(3), text)
    return replaced, count > 0


def render_results(
    renderers: dict[str, Callable[[dict], str]], directory: Path = RESULTS_DIR, target: Path = RESULTS_MD
) -> dict[str, str]:
    """Rewrite each `<!-- table: NAME -->` block of `target` from the newest full record of NAME.

    Returns what happened to each benchmark: "rendered", "no marker" or "no record".
    """
    records = newest_records(directory, "full")
    text = target.read_text(encoding="utf-8")
    outcome = {}
    for name, render in renderers.items():
        if name not in records:
            outcome[name] = "no record"
            continue
        body = with_load_column(render(records[name]), records[name]) + "\n\n" + provenance(records[name])
        text, found = replace_block(text, name, body)
        outcome[name] = "rendered" if found else "no marker"
    target.write_text(text, encoding="utf-8")
    return outcome
