"""Shared fixtures: real BEIR data (full and a deterministic subset), a tiny random BERT, real MiniLM.

Data comes from `../shared/data/beir` (or $DENSEKIT_DATA). Tests that need it skip with a reason
when it is absent; CI always has it. The embedding cache is redirected to a per-session temporary
DENSEKIT_HOME so tests never read a developer's cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Under pytest-xdist (`make test` runs two workers on two cores) each worker gets one OpenMP/torch
# thread: two workers with two threads each spin-wait for each other's cores (docs/next-engineer.md).
# Set before anything imports torch; subprocesses (CLI runs, benchmark smoke runs) inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED_BEIR = REPO.parent / "shared" / "data" / "beir"


def _beir_root() -> Path | None:
    for raw in os.environ.get("DENSEKIT_DATA", "").split(os.pathsep):
        if raw and (Path(raw) / "scifact").is_dir():
            return Path(raw)
    return SHARED_BEIR if (SHARED_BEIR / "scifact").is_dir() else None


BEIR_ROOT = _beir_root()


def pytest_configure(config: pytest.Config) -> None:
    if BEIR_ROOT is not None:
        os.environ["DENSEKIT_DATA"] = str(BEIR_ROOT)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def densekit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache root for the whole test run (embeddings, fetched models), shared by its xdist workers.

    $DENSEKIT_TEST_HOME keeps a cache across sessions (useful when iterating locally).
    """
    if os.environ.get("DENSEKIT_TEST_HOME"):
        home = Path(os.environ["DENSEKIT_TEST_HOME"])
    elif os.environ.get("PYTEST_XDIST_WORKER"):
        # one cache for all workers of this run (their basetemps share a parent): a corpus is encoded
        # once, the other workers wait for it (encode_corpus's lock) instead of encoding it again
        home = tmp_path_factory.getbasetemp().parent / "densekit_home"
        home.mkdir(exist_ok=True)
    else:
        home = tmp_path_factory.mktemp("densekit_home")
    os.environ["DENSEKIT_HOME"] = str(home)
    os.environ["DENSEKIT_QUIET"] = "1"
    from densekit.progress import set_quiet

    set_quiet(True)
    return home


@pytest.fixture(scope="session")
def beir_root() -> Path:
    if BEIR_ROOT is None:
        pytest.skip("BEIR data not found (../shared/data/beir or $DENSEKIT_DATA)")
    return BEIR_ROOT


@pytest.fixture(scope="session")
def scifact_dir(beir_root: Path) -> Path:
    return beir_root / "scifact"


@pytest.fixture(scope="session")
def nfcorpus_dir(beir_root: Path) -> Path:
    return beir_root / "nfcorpus"


def write_subset(source: Path, target: Path, n_queries: int, n_distractors: int, split: str = "test") -> Path:
    """A deterministic BEIR subset: the first `n_queries` judged queries of `split`, every document
    they judge, and the first `n_distractors` other documents in corpus order."""
    import csv

    target.mkdir(parents=True, exist_ok=True)
    (target / "qrels").mkdir(exist_ok=True)
    with open(source / "qrels" / f"{split}.tsv", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))[1:]
    chosen: list[str] = []
    for query_id, _, _ in rows:
        if query_id not in chosen:
            chosen.append(query_id)
        if len(chosen) == n_queries:
            break
    keep_rows = [r for r in rows if r[0] in chosen]
    judged_docs = {r[1] for r in keep_rows}
    with open(target / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for row in keep_rows:
            handle.write("\t".join(row) + "\n")
    extra = 0
    with (
        open(source / "corpus.jsonl", encoding="utf-8") as src,
        open(target / "corpus.jsonl", "w", encoding="utf-8") as dst,
    ):
        for line in src:
            doc_id = json.loads(line)["_id"]
            if doc_id in judged_docs or extra < n_distractors:
                if doc_id not in judged_docs:
                    extra += 1
                dst.write(line)
    with (
        open(source / "queries.jsonl", encoding="utf-8") as src,
        open(target / "queries.jsonl", "w", encoding="utf-8") as dst,
    ):
        for line in src:
            if json.loads(line)["_id"] in chosen:
                dst.write(line)
    return target


@pytest.fixture(scope="session")
def scifact_small(scifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SciFact test subset: 20 queries, their judged documents and 200 distractors."""
    return write_subset(scifact_dir, tmp_path_factory.mktemp("scifact_small"), n_queries=20, n_distractors=200)


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    from densekit.retriever.models import resolve_model

    return resolve_model("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def minilm(minilm_folder: Path):
    """The real all-MiniLM-L6-v2 encoder on CPU (shared across tests; do not mutate)."""
    from densekit.retriever.encoder import Encoder

    return Encoder("all-MiniLM-L6-v2", device="cpu")


@pytest.fixture(scope="session")
def tiny_model(minilm_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer, 32-d BERT with MiniLM's tokenizer, saved as a
    sentence-transformers folder (mean pooling, normalised). Seeded, so identical every run."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from densekit.retriever.encoder import EncoderConfig, write_sentence_transformers_folder

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    model = BertModel(config).eval()
    folder = tmp_path_factory.mktemp("tiny_bert")
    write_sentence_transformers_folder(folder, model, tokenizer, EncoderConfig(max_length=128))
    return folder


@pytest.fixture(scope="session")
def train_negatives(scifact_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A negatives file in the mining format for the SciFact subset (training tests): each judged
    query, its positives, and three other judged documents as ranked negatives."""
    from densekit.data import load_dataset

    ds = load_dataset(scifact_small, split="test")
    judged = sorted({d for docs in ds.qrels.values() for d, rel in docs.items() if rel > 0})
    path = tmp_path_factory.mktemp("train_negatives") / "negatives.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i, (query_id, docs) in enumerate(sorted(ds.qrels.items())):
            positives = sorted(d for d, rel in docs.items() if rel > 0)
            others = [d for d in judged if d not in positives]
            negatives = [others[(i * 3 + j) % len(others)] for j in range(3)]
            handle.write(
                json.dumps(
                    {
                        "query_id": query_id,
                        "query": ds.queries[query_id],
                        "positives": positives,
                        "negatives": [{"id": d, "rank": r + 1} for r, d in enumerate(negatives)],
                    }
                )
                + "\n"
            )
    return path


def run_cli(
    args: list[str], capsys: pytest.CaptureFixture | None = None, monkeypatch: pytest.MonkeyPatch | None = None
) -> tuple[int, str, str]:
    """Run `densekit ARGS` in-process through the real entry point; return (exit code, stdout, stderr).

    The one in-process CLI helper of the tests. Without `capsys` (e.g. in a module-scoped fixture) the
    output is not captured and comes back as "", "".
    """
    from densekit.cli import main

    patch = monkeypatch or pytest.MonkeyPatch()
    patch.setattr(sys, "argv", ["densekit", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        if monkeypatch is None:
            patch.undo()
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


DENSEKIT = str(Path(sys.executable).with_name("densekit"))  # the installed console script


def run_cli_subprocess(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 600, check: bool = False
) -> subprocess.CompletedProcess:
    """Run `densekit ARGS` as a real process (the installed console script), from the repository root,
    with `env` added to the environment; output captured as text. The one subprocess CLI helper."""
    return subprocess.run(
        [DENSEKIT, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        timeout=timeout,
        check=check,
    )
