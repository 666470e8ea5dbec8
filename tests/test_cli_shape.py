"""The CLI's shape: the README's commands keep their `--json` keys, modules stay small, text output
keeps square brackets, `--version` works, and a wrong index directory fails before any model loads.

The key sets in tests/data/cli_json_keys.json were recorded from the single-file cli.py before it
became a package (`DENSEKIT_RECORD_CLI_KEYS=1 pytest tests/test_cli_shape.py -k keys` rewrites them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli

KEYS_FILE = Path(__file__).parent / "data" / "cli_json_keys.json"
# Dicts whose keys are data (query ids, metric names), not the output's shape.
DATA_KEYED = {"results", "metrics", "per_query", "splits", "by_filter", "removed_by_filter", "timings"}


def key_paths(obj: object, prefix: str = "") -> list[str]:
    """Every key path of a JSON value ("a.b", list items as "a[]"), not descending into DATA_KEYED maps."""
    paths: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.append(path)
            if key not in DATA_KEYED:
                paths += key_paths(value, path)
    elif isinstance(obj, list) and obj:
        paths += key_paths(obj[0], prefix + "[]")
    return sorted(set(paths))


def readme_commands(model: Path, small: Path, work: Path) -> dict[str, list[str]]:
    """The README's main commands on the SciFact subset with the tiny model, in run order."""
    idx, bm25, run_a, run_b = work / "idx", work / "bm25", work / "a.trec", work / "b.trec"
    return {
        "index build": ["index", "build", str(small), "--model", str(model), "--out", str(idx)],
        "index build --bm25": ["index", "build", str(small), "--bm25", "--backend", "bm25s", "--out", str(bm25)],
        "index info": ["index", "info", str(idx)],
        "search": ["search", str(idx), "vitamin d", "-k", "3"],
        "search --queries --out": [
            "search",
            str(idx),
            "--queries",
            str(small),
            "--split",
            "test",
            "-k",
            "100",
            "--out",
            str(run_a),
        ],
        "search bm25 --out": [
            "search",
            str(bm25),
            "--queries",
            str(small),
            "--split",
            "test",
            "-k",
            "100",
            "--out",
            str(run_b),
        ],
        "eval --index": ["eval", str(small), "--index", str(idx), "--depth", "100"],
        "eval --run": ["eval", str(small), "--run", str(run_a)],
        "eval --bm25": ["eval", str(small), "--bm25", "--backend", "bm25s", "--depth", "100"],
        "mine": [
            "mine",
            str(small),
            "--split",
            "test",
            "--teacher",
            str(model),
            "--out",
            str(work / "neg.jsonl"),
            "--depth",
            "20",
        ],
        # the tiny random teacher scores its positives far above the rest: percpos leaves no negatives
        "mine --method naive": [
            "mine",
            str(small),
            "--split",
            "test",
            "--teacher",
            str(model),
            "--out",
            str(work / "naive.jsonl"),
            "--depth",
            "20",
            "--method",
            "naive",
        ],
        "train-reranker": [
            "train-reranker",
            "--model",
            str(model),
            "--negatives",
            str(work / "naive.jsonl"),
            "--corpus",
            str(small),
            "--output",
            str(work / "ce"),
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--max-length",
            "32",
            "--device",
            "cpu",
        ],
        "compare": ["compare", str(run_a), str(run_b), "--data", str(small), "--trials", "200"],
        # the subset has only a test split: trained on (its dev slice held out), no test report
        "finetune": [
            "finetune",
            str(small),
            "-m",
            str(model),
            "-o",
            str(work / "ft"),
            "--train-split",
            "test",
            "--test-split",
            "none",
            "--mine-method",
            "naive",
            "--mine-depth",
            "20",
            "--ce-max-steps",
            "1",
            "--ce-batch-size",
            "4",
            "--ce-max-length",
            "32",
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--max-length",
            "32",
            "--distill",
            "none",
            "--eval-steps",
            "0",
            "--device",
            "cpu",
        ],
    }


def test_readme_commands_keep_their_json_keys(tiny_model, scifact_small, tmp_path, capsys, monkeypatch) -> None:
    seen: dict[str, list[str]] = {}
    for name, args in readme_commands(tiny_model, scifact_small, tmp_path).items():
        code, out, err = run_cli([*args, "--json"], capsys, monkeypatch)
        assert code == 0, f"{name}: {err}"
        seen[name] = key_paths(json.loads(out))
    if os.environ.get("DENSEKIT_RECORD_CLI_KEYS"):
        KEYS_FILE.parent.mkdir(exist_ok=True)
        KEYS_FILE.write_text(json.dumps(seen, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    recorded = json.loads(KEYS_FILE.read_text(encoding="utf-8"))
    assert seen == recorded


def test_every_cli_module_is_small() -> None:
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (REPO / "densekit" / "cli").glob("*.py")}
    assert sizes and all(n <= 250 for n in sizes.values()), sizes


def test_square_brackets_survive_in_text_output(tiny_model, scifact_small, tmp_path, capsys, monkeypatch) -> None:
    idx = tmp_path / "idx"
    assert (
        run_cli(
            ["index", "build", str(scifact_small), "--model", str(tiny_model), "--out", str(idx), "-q"],
            capsys,
            monkeypatch,
        )[0]
        == 0
    )
    code, out, _ = run_cli(
        ["search", str(idx), "Lp[a] and pip install 'densekit[lucene]'", "-k", "2"], capsys, monkeypatch
    )
    flat = " ".join(out.split())  # rich may wrap the title
    assert code == 0 and "Lp[a]" in flat and "densekit[lucene]" in flat


def test_version(capsys, monkeypatch) -> None:
    from densekit import __version__

    code, out, _ = run_cli(["--version"], capsys, monkeypatch)
    assert code == 0 and out.strip() == f"densekit {__version__}"


_PROBE = """
import sys
from densekit.cli import main
sys.argv = ["densekit", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    print("loaded:", "transformers" in sys.modules, "torch" in sys.modules, file=sys.stderr)
    raise
"""


@pytest.mark.parametrize(
    "args",
    [
        ["search", "/no/such/index", "a query"],
        ["eval", "scifact", "--index", "/no/such/index"],
        ["mine", "scifact", "--out", "neg.jsonl", "--negatives", "-1"],
        ["mine", "scifact", "--out", "neg.jsonl", "--guide-margin", "0.1"],
        ["eval", "scifact", "--model", "all-MiniLM-L6-v2", "--nprobe", "4"],
        ["index", "build", "scifact", "--out", "idx", "--train-sample", "0"],
        ["finetune", "scifact", "-m", "all-MiniLM-L6-v2", "-o", "ft", "--distill", "none,foo"],
    ],
)
def test_bad_options_fail_before_any_model_loads(args, tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "DENSEKIT_HOME": str(tmp_path)},
        timeout=120,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines[0].startswith("densekit: error: ") and lines[-1] == "loaded: False False", result.stderr


def test_index_build_config_is_shared_by_both_builders() -> None:
    import inspect
    from dataclasses import fields

    from densekit.index.config import IndexBuildConfig
    from densekit.index.dense import DenseIndex
    from densekit.index.shards import build_from_shards

    names = {f.name for f in fields(IndexBuildConfig)}
    for builder in (DenseIndex.build, build_from_shards):
        assert names <= set(inspect.signature(builder).parameters), builder


def test_train_has_one_option_per_config_field() -> None:
    from dataclasses import fields

    import typer

    from densekit.cli import app
    from densekit.retriever.train.config import DataConfig, LossConfig, TrainConfig

    train = typer.main.get_command(app).commands["train"]
    options = {opt: param for param in train.params for opt in param.opts}
    for cls in (TrainConfig, DataConfig, LossConfig):
        for f in fields(cls):
            if f.name in ("data", "loss"):
                continue
            flag = (f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),))[0]
            assert flag in options and options[flag].help == f.metadata["help"], f.name
    assert options["--lr"].default == 2e-5 and options["--loss"].default == "infonce"
    assert options["--model"].required and "-m" in options["--model"].opts


def test_search_takes_a_plain_queries_file_and_reports_the_index(
    tiny_model, scifact_small, tmp_path, capsys, monkeypatch
) -> None:
    idx = tmp_path / "idx"
    assert (
        run_cli(
            ["index", "build", str(scifact_small), "--model", str(tiny_model), "--out", str(idx), "-q"],
            capsys,
            monkeypatch,
        )[0]
        == 0
    )
    code, out, err = run_cli(
        ["search", str(idx), "--queries", str(scifact_small / "queries.jsonl"), "-k", "3", "--json"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert len(json.loads(out)["results"]) == 20
    code, out, _ = run_cli(["search", str(idx), "vitamin d", "-k", "1", "--json"], capsys, monkeypatch)
    found = json.loads(out)
    assert found["index"] == str(idx) and found["corpus"] == str(idx / "docs.jsonl")
    code, out, _ = run_cli(["index", "info", str(idx)], capsys, monkeypatch)
    assert code == 0 and "bytes_on_disk" in out and "{'" not in out


def test_compare_plot_without_matplotlib_keeps_the_comparison(scifact_small, tmp_path) -> None:
    run = tmp_path / "a.trec"
    judged = [line.split("\t")[:2] for line in (scifact_small / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    run.write_text("".join(f"{q} Q0 {d} 1 1.0 x\n" for q, d in judged), encoding="utf-8")
    blocked = (
        "import sys; sys.modules['matplotlib'] = None\nfrom densekit.cli import main\n"
        "sys.argv = ['densekit', *sys.argv[1:]]\nmain()"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            blocked,
            "compare",
            str(run),
            str(run),
            "--data",
            str(scifact_small),
            "--trials",
            "50",
            "--plot",
            str(tmp_path / "p.png"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "ndcg@10" in json.loads(result.stdout)["metrics"] and "plot skipped" in result.stderr
    assert not (tmp_path / "p.png").exists()


def test_miner_from_config(tiny_model, scifact_small) -> None:
    from densekit.data import load_dataset
    from densekit.mining.config import MiningConfig, build_miner
    from densekit.mining.filters import PercPosFilter

    config = MiningConfig(teacher=str(tiny_model), negatives=2, depth=10, device="cpu")
    miner = build_miner(config, load_dataset(scifact_small).corpus)
    assert (miner.negatives, miner.depth, miner.fusion) == (2, 10, "rrf")
    assert any(isinstance(f, PercPosFilter) for f in miner.filters)
