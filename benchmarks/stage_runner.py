"""Resumable stages for the benchmarks that train many models (benchmarks/ablation.py): each stage is one
densekit command whose JSON summary is kept beside its output, skipped when it is there with the same
command, and (with an archive) restored from and kept in the committed stage archive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from record import cpu_info
from stage_archive import StageArchive


class StageRunner:
    """Runs stages and logs every one (run now or kept from earlier) with its wall time, load and CPU.

    A subclass provides `archive` (a :class:`StageArchive` or None) and `log` (a list, the record's
    ``stages``)."""

    archive: StageArchive | None
    log: list[dict]

    def run(
        self, name: str, command: list[str], done: Path, files: tuple[Path, ...] = (), restore: bool = True
    ) -> dict:
        """Run one densekit command (skipped when `done` holds the same command); its JSON output, kept in `done`.

        With ``--archive``, a stage missing here is first brought back from the archive (`done` and its
        output `files`; not with `restore` False: a model's summary without the model), and a stage that
        runs is archived when it finishes.
        """
        if self.archive and restore:
            self.archive.restore(done, files)
        if done.is_file():
            summary = json.loads(done.read_text(encoding="utf-8"))
            if summary["command"] != command:  # another setting: never reuse a stage silently
                raise SystemExit(f"[ablation] {name}: {done} was made by another command ({summary['command']}); "
                                 "use another --out, or delete that stage's files to run it again")  # fmt: skip
            self.note(name, summary, reused=True)
            return summary
        print(f"[ablation] {name}: {' '.join(command)}", file=sys.stderr, flush=True)
        load_before, start = round(os.getloadavg()[0], 2), time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"[ablation] {name} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        summary = {"command": command, "wall_s": round(time.perf_counter() - start, 1)}
        summary["load_before_after"] = [load_before, round(os.getloadavg()[0], 2)]
        summary["cpu"] = cpu_info()[0]  # stages of one ablation may run on several sessions' machines
        summary["output"] = json.loads(result.stdout) if result.stdout.strip() else None
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(summary, indent=1), encoding="utf-8")
        if self.archive:
            self.archive.keep(done, files)
        self.note(name, summary, reused=False)
        return summary

    def note(self, name: str, summary: dict, reused: bool) -> None:
        """Every stage in the result, also one kept from an earlier run (its own wall time and load)."""
        if any(entry["stage"] == name for entry in self.log):
            return
        entry = {"stage": name, "wall_s": summary["wall_s"], "reused": reused}
        entry["load_before_after"] = summary.get("load_before_after")
        entry["cpu"] = summary.get("cpu")
        self.log.append(entry)
