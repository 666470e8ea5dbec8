"""Long documents as passages: token windows with overlap, cut at sentence ends where possible.

A document longer than the encoder's window (256 tokens for all-MiniLM-L6-v2) is otherwise cut when
encoded, and the rest of its text can never be found. :func:`chunk_corpus` splits each document's
text into windows of at most `size` tokens of the encoder's own tokenizer, each window starting
`overlap` tokens before the previous one ended; a window that would end inside a sentence ends at
the last sentence end in its second half instead (so passages are whole sentences where the text
allows). Every passage keeps its document's title (encoded as ``title + passage``, as BEIR encodes
whole documents), its document id and its character offsets in the document's text.

Passage ids are ``<doc id>#<n>`` (n = 0, 1, ... in text order): unique because the suffix is always
an integer, and the document id is recovered with :func:`parent_id` without any extra file.
Aggregating passage hits back into documents (MaxP, FirstP, SumP; Dai & Callan, SIGIR 2019) is
:class:`densekit.retriever.passages.PassageRetriever`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from densekit.data import Corpus
from densekit.errors import DensekitError

AGGREGATIONS = ("maxp", "firstp", "sump")
SEPARATOR = "#"
TOKENIZE_BLOCK = 4096
SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+")


@dataclass
class ChunkConfig:
    """How documents are split into passages at index time and how passage hits become document hits."""

    chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Split documents into passages of at most this many tokens (the encoder's tokenizer; "
            "the title is added to each passage). Default: whole documents."
        },
    )
    chunk_overlap: int = field(default=0, metadata={"help": "Tokens each passage repeats from the previous one."})
    aggregate: str = field(
        default="maxp",
        metadata={
            "help": "How passage scores make a document's: maxp (its best passage), firstp (its first "
            "passage only) or sump (the sum of its retrieved passages)."
        },
    )

    @property
    def enabled(self) -> bool:
        return self.chunk_size is not None

    def validate(self, max_length: int | None = None) -> None:
        """Check the settings (and, given the encoder's window, that a passage fits in it)."""
        if self.aggregate not in AGGREGATIONS:
            raise DensekitError(f"--aggregate must be one of {', '.join(AGGREGATIONS)}, got {self.aggregate!r}")
        if self.chunk_size is None:
            if self.chunk_overlap:
                raise DensekitError("--chunk-overlap needs --chunk-size")
            return
        if self.chunk_size < 8:
            raise DensekitError(f"--chunk-size must be at least 8 tokens, got {self.chunk_size}")
        if not 0 <= self.chunk_overlap < self.chunk_size // 2 + 1:
            raise DensekitError(
                f"--chunk-overlap must be between 0 and half of --chunk-size ({self.chunk_size // 2}), "
                f"got {self.chunk_overlap}"
            )
        if max_length is not None and self.chunk_size > max_length - 2:
            raise DensekitError(
                f"--chunk-size {self.chunk_size} does not fit the encoder's window of {max_length} tokens "
                f"(with its 2 special tokens); use at most {max_length - 2}"
            )

    def to_manifest(self, tokenizer: str, passages: int, documents: int) -> dict[str, Any]:
        """What an index manifest records under ``"passages"``."""
        return {**asdict(self), "tokenizer": tokenizer, "count": passages, "documents": documents}


def passage_id(doc_id: str, n: int) -> str:
    return f"{doc_id}{SEPARATOR}{n}"


def parent_id(passage: str) -> str:
    """The document id of passage id ``<doc id>#<n>``."""
    return passage.rsplit(SEPARATOR, 1)[0]


def passage_number(passage: str) -> int:
    return int(passage.rsplit(SEPARATOR, 1)[1])


def sentence_ends(text: str) -> list[int]:
    """Character offsets just after each sentence end (and its trailing space) in `text`."""
    return [m.end() for m in SENTENCE_END.finditer(text)]


def split_text(text: str, offsets: list[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the passages of `text`, whose tokens span `offsets`
    (characters, from a Hugging Face fast tokenizer); see :func:`token_windows`."""
    if not offsets:
        return [(0, len(text))]
    stripped_ends = {_trim(text, e) for e in sentence_ends(text)}
    boundaries = [i + 1 for i, (_, end) in enumerate(offsets) if end in stripped_ends]
    return [
        (offsets[start][0], offsets[stop - 1][1])
        for start, stop in token_windows(len(offsets), boundaries, size, overlap)
    ]


def _trim(text: str, end: int) -> int:
    """Move a sentence end back over the whitespace the sentence regex consumed."""
    while end > 0 and text[end - 1].isspace():
        end -= 1
    return end


def token_windows(n: int, boundaries: list[int], size: int, overlap: int) -> list[tuple[int, int]]:
    """Token index windows ``[start, stop)`` over `n` tokens.

    A window holds at most `size` tokens. When it would stop inside the text, it stops instead at the
    last sentence boundary (a token index in `boundaries`: a sentence ends just before it) within its
    second half, if there is one. The next window starts `overlap` tokens before the previous stop.
    """
    windows: list[tuple[int, int]] = []
    start = 0
    while True:
        stop = min(start + size, n)
        if stop < n:
            half = start + size // 2
            snapped = [b for b in boundaries if half < b <= stop]
            if snapped:
                stop = snapped[-1]
        windows.append((start, stop))
        if stop >= n:
            return windows
        # Start the next window at a sentence start inside the overlap when there is one (overlapping a
        # little more, up to twice `overlap`), else exactly `overlap` tokens back.
        starts = [b for b in boundaries if stop - 2 * overlap <= b <= stop - overlap] if overlap else []
        start = max(starts[-1] if starts else stop - overlap, start + 1)


def chunk_corpus(corpus: Corpus, tokenizer: Any, config: ChunkConfig) -> tuple[Corpus, list[dict[str, Any]]]:
    """Split every document of `corpus` into passages.

    Returns the passages as a Corpus (ids ``<doc id>#<n>``, the document's title, the passage text)
    and, per passage, its metadata: ``{"parent_id", "passage", "start", "end"}`` (character offsets in
    the document's text). A document that fits in one window is one passage (``<doc id>#0``).
    """
    if config.chunk_size is None:
        raise DensekitError("chunk_corpus needs a chunk_size")
    ids: list[str] = []
    titles: list[str] = []
    body: list[str] = []
    meta: list[dict[str, Any]] = []
    for block in range(0, len(corpus), TOKENIZE_BLOCK):
        texts = corpus.body[block : block + TOKENIZE_BLOCK]
        # One batched call: the Rust tokenizer works in parallel; verbose=False because long texts are
        # the point here, not a mistake.
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        for i, (text, offsets) in enumerate(zip(texts, encoded["offset_mapping"], strict=True)):
            doc_id, title = corpus.ids[block + i], corpus.titles[block + i]
            spans = split_text(text, [tuple(o) for o in offsets], config.chunk_size, config.chunk_overlap)
            for n, (start, end) in enumerate(spans):
                ids.append(passage_id(doc_id, n))
                titles.append(title)
                body.append(text[start:end])
                meta.append({"parent_id": doc_id, "passage": n, "start": start, "end": end})
    return Corpus(ids, titles, body), meta
