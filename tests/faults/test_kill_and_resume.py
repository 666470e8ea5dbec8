"""kill -9 in the middle of mining and of sharded encoding, then resume: the same bytes as a run that
was never interrupted (issue 16: "kill -9 at several points of build/encode/mine/train")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def densekit(args: list[str], home: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DENSEKIT_HOME": str(home), "DENSEKIT_QUIET": "1"}
    env.pop("DENSEKIT_FAULT", None)
    if fault:
        env["DENSEKIT_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "densekit.cli", *args, "--quiet"], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("point", ["mining-chunk:2"])
def test_mining_killed_after_a_chunk_resumes_to_the_same_bytes(point, tiny_model, scifact_small, tmp_path) -> None:
    base = [
        "mine",
        str(scifact_small),
        "--split",
        "test",
        "--teacher",
        str(tiny_model),
        "--negatives",
        "3",
        "--depth",
        "20",
        "--chunk-size",
        "6",
        "--sampler",
        "uniform",
        "--seed",
        "5",
    ]
    home = tmp_path / "home"
    whole = densekit([*base, "--out", str(tmp_path / "whole.jsonl")], home)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed.jsonl"
    killed = densekit([*base, "--out", str(out)], home, fault=point)
    assert killed.returncode == -signal.SIGKILL and not out.exists()
    resumed = densekit([*base, "--out", str(out), "--resume"], home)
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_shard_encoding_killed_after_a_shard_resumes_to_the_same_index(tiny_model, scifact_small, tmp_path) -> None:
    home = tmp_path / "home"
    args = ["index", "encode", str(scifact_small), "--model", str(tiny_model), "--shard-size", "64"]
    whole = densekit([*args, "--out", str(tmp_path / "whole.shards"), "--index", str(tmp_path / "whole.idx")], home)
    assert whole.returncode == 0, whole.stderr
    killed = densekit([*args, "--out", str(tmp_path / "k.shards")], home, fault="shard-written:2")
    assert killed.returncode == -signal.SIGKILL
    assert len(list((tmp_path / "k.shards").glob("shard-*.json"))) == 2
    resumed = densekit([*args, "--out", str(tmp_path / "k.shards"), "--index", str(tmp_path / "k.idx")], home)
    assert resumed.returncode == 0, resumed.stderr
    for shard in sorted((tmp_path / "whole.shards").glob("shard-*.npy")):
        assert (tmp_path / "k.shards" / shard.name).read_bytes() == shard.read_bytes()
    assert (tmp_path / "k.idx" / "index.faiss").read_bytes() == (tmp_path / "whole.idx" / "index.faiss").read_bytes()
