"""Inputs the benchmarks need besides their own data: the smoke size's tiny dataset and model, and the
mined (query, positive, negative) tuples that benchmarks/train.py trains on.

- :func:`smoke_dataset`: a deterministic SciFact subset (the first 20 judged test queries, the
  documents they judge and 200 others), written as a BEIR folder;
- :func:`tiny_model`: a randomly initialised, seeded 2-layer 32-d BERT with all-MiniLM-L6-v2's
  tokenizer, saved as a sentence-transformers folder;
- :func:`mined_negatives`: densekit's miner over a dataset's split (TopK-PercPos 0.95, 4 negatives
  from the top 100: the setting RESULTS.md's training section uses); :func:`judged_negatives`: tuples
  for the smoke size, without a model.

Each is written once into the folder given and reused when it is already there. :func:`beir_root`
finds the shared BEIR data; :func:`smoke_scifact` and :func:`smoke_model` are the smoke size's dataset
and model inside a runner's scratch folder.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def smoke_dataset(
    source: Path, target: Path, n_queries: int = 20, n_distractors: int = 200, splits: dict[str, int] | None = None
) -> Path:
    """A BEIR subset of `source` in `target` (the first `n_queries` of its test split, or the first
    queries of each split `splits` names, ``{split: count}``); see the module docstring."""
    if (target / "queries.jsonl").is_file():
        return target
    (target / "qrels").mkdir(parents=True, exist_ok=True)
    chosen: list[str] = []
    judged: set[str] = set()
    for split, count in (splits or {"test": n_queries}).items():
        with open(source / "qrels" / f"{split}.tsv", encoding="utf-8") as handle:
            rows = list(csv.reader(handle, delimiter="\t"))[1:]
        picked = list(dict.fromkeys(r[0] for r in rows))[:count]
        kept = [r for r in rows if r[0] in picked]
        chosen += picked
        judged |= {r[1] for r in kept}
        with open(target / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as handle:
            handle.write("query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in kept))
    extra = 0
    with open(source / "corpus.jsonl", encoding="utf-8") as src, open(target / "corpus.jsonl", "w") as dst:
        for line in src:
            doc_id = json.loads(line)["_id"]
            if doc_id in judged or extra < n_distractors:
                extra += doc_id not in judged
                dst.write(line)
    with open(source / "queries.jsonl", encoding="utf-8") as src, open(target / "queries.jsonl.partial", "w") as dst:
        dst.writelines(line for line in src if json.loads(line)["_id"] in chosen)
    (target / "queries.jsonl.partial").rename(target / "queries.jsonl")  # written last: marks the folder complete
    return target


def tiny_model(target: Path) -> Path:
    """A seeded random tiny BERT as a sentence-transformers folder in `target`."""
    if (target / "modules.json").is_file():
        return target
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from densekit.retriever.encoder import EncoderConfig, write_sentence_transformers_folder
    from densekit.retriever.models import resolve_model

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    write_sentence_transformers_folder(partial, BertModel(config).eval(), tokenizer, EncoderConfig(max_length=128))
    partial.rename(target)
    return target


def mined_negatives(data: str, split: str, model: str, out: Path) -> Path:
    """Negatives of every judged query of `data`/`split` mined with `model` as teacher, into `out`."""
    if out.is_file():
        return out
    from densekit.data import load_dataset
    from densekit.mining import DenseScorer, HardNegativeMiner, PercPosFilter
    from densekit.progress import set_quiet
    from densekit.retriever.encoder import Encoder

    set_quiet(True)
    ds = load_dataset(data, split=split)
    teacher = DenseScorer(Encoder(model, device="cpu"), ds.corpus, show_progress=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    HardNegativeMiner(teacher, filters=[PercPosFilter(0.95)], negatives=4, depth=100).mine(ds, out)
    return out


def judged_negatives(data: str, out: Path) -> Path:
    """Tuples without a model (the smoke size's): each judged test query, its positives, and three
    other judged documents as its ranked negatives (a random tiny model's miner keeps none)."""
    if out.is_file():
        return out
    from densekit.data import load_dataset

    ds = load_dataset(data, split="test")
    judged = sorted({d for docs in ds.qrels.values() for d, rel in docs.items() if rel > 0})
    lines = []
    for i, (query_id, docs) in enumerate(sorted(ds.qrels.items())):
        positives = sorted(d for d, rel in docs.items() if rel > 0)
        others = [d for d in judged if d not in positives]
        negatives = [{"id": others[(i * 3 + j) % len(others)], "rank": j + 1} for j in range(3)]
        record = {"query_id": query_id, "query": ds.queries[query_id], "positives": positives, "negatives": negatives}
        lines.append(json.dumps(record) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".partial").write_text("".join(lines), encoding="utf-8")
    out.with_suffix(".partial").rename(out)
    return out


def beir_root() -> str:
    """The folder holding scifact/: the first such entry of DENSEKIT_DATA, else ../shared/data/beir."""
    for raw in os.environ.get("DENSEKIT_DATA", "").split(os.pathsep):
        if raw and (Path(raw) / "scifact").is_dir():
            return raw
    shared = REPO.parent / "shared" / "data" / "beir"
    if (shared / "scifact").is_dir():
        return str(shared)
    raise SystemExit("SciFact not found: set DENSEKIT_DATA to the folder that holds scifact/")


def smoke_scifact(workdir: Path) -> str:
    """The smoke size's SciFact subset in `workdir`."""
    return str(smoke_dataset(Path(beir_root()) / "scifact", workdir / "scifact-smoke"))


def smoke_model(workdir: Path) -> str:
    """The smoke size's tiny BERT in `workdir`."""
    return str(tiny_model(workdir / "tiny-bert"))
