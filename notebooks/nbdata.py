"""Small, deterministic BEIR subsets for the notebooks, so they run in minutes on a laptop CPU.

`beir_subset` keeps the first `test_queries` judged test queries and the first `train_queries`
judged train queries (file order), every document they judge, and the first `distractors` other
documents in corpus order, and writes them as a regular BEIR folder (corpus.jsonl, queries.jsonl,
qrels/test.tsv, qrels/train.tsv). Every densekit API that takes a dataset takes the folder.
Set the sizes to None to use the whole dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

from densekit.data import available_splits, load_dataset, resolve_dataset


def beir_subset(
    name: str,
    dest: str | Path,
    test_queries: int | None = 50,
    train_queries: int | None = 0,
    distractors: int | None = 500,
) -> Path:
    """Write the subset of dataset `name` (a path, or a name under $DENSEKIT_DATA) to `dest`."""
    source = resolve_dataset(name)
    wanted = {"test": test_queries, "train": train_queries}
    splits = {}
    for split, count in wanted.items():
        if count == 0 or split not in available_splits(source):
            continue
        ds = load_dataset(source, split=split)
        chosen = list(ds.qrels)[:count] if count is not None else list(ds.qrels)
        splits[split] = (ds, [q for q in chosen if q in ds.queries])
    corpus = next(iter(splits.values()))[0].corpus
    judged = {d for ds, chosen in splits.values() for q in chosen for d in ds.qrels[q]}
    others = [d for d in corpus.ids if d not in judged]
    keep = judged | set(others if distractors is None else others[:distractors])

    dest = Path(dest)
    (dest / "qrels").mkdir(parents=True, exist_ok=True)
    with open(dest / "corpus.jsonl", "w", encoding="utf-8") as out:
        for doc_id in corpus.ids:
            if doc_id in keep:
                out.write(json.dumps(corpus.document(doc_id)) + "\n")
    written: set[str] = set()
    with open(dest / "queries.jsonl", "w", encoding="utf-8") as out:
        for ds, chosen in splits.values():
            for q in chosen:
                if q in written:
                    continue
                written.add(q)
                out.write(json.dumps({"_id": q, "text": ds.queries[q]}) + "\n")
    for split, (ds, chosen) in splits.items():
        with open(dest / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as out:
            out.write("query-id\tcorpus-id\tscore\n")
            for q in chosen:
                for doc_id, rel in ds.qrels[q].items():
                    if doc_id in keep:
                        out.write(f"{q}\t{doc_id}\t{rel}\n")
    return dest
