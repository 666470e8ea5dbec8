"""`MiningConfig`: one hard-negative mining run, with the help text of `densekit mine` on its fields.

`build_miner(config, corpus)` turns it into a :class:`~densekit.mining.miner.HardNegativeMiner`
(teacher, candidate sources, positive-aware filters of NV-Retriever arXiv 2407.15831, the GIST guide
of arXiv 2402.16829, the sampler); `mine(config, ...)` is the one library call behind `densekit mine`.
`validate()` checks everything that needs no model, so a wrong option fails before any model loads.

`mine` records the options beside the negatives file, in an ``"options"`` block of the config sidecar
``<out>.config.json``::

    "options": {"mining": {...every MiningConfig field...}, "data": "/abs/beir/folder", "split": "train",
                "negatives_sha256": "<sha256 of <out>>"}

with paths (models, index folders, the dataset) made absolute. :func:`read_recorded` reads it back so
that training can re-run the same mining with its current weights as the teacher (Conan-embedding,
arXiv 2408.15710; :mod:`densekit.retriever.train.remine`): no sidecar, a sidecar without options (an
older densekit) or a negatives file the sidecar does not describe (sha256) is a one-line DensekitError.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from densekit.errors import DensekitError, IntegrityError

if TYPE_CHECKING:
    from densekit.data import BeirDataset, Corpus
    from densekit.mining.miner import HardNegativeMiner, MiningResult
    from densekit.mining.sources import DenseScorer


@dataclass
class MiningConfig:
    """Teacher, guide, filters, sampler and sources of a mining run (NV-Retriever's best is the default:
    TopK-PercPos 95%, four negatives)."""

    teacher: str = field(default="all-MiniLM-L6-v2", metadata={"help": "Teacher encoder that scores candidates."})
    truncate_dim: int | None = field(
        default=None, metadata={"help": "Dense encoders (teacher, guide, model sources) keep this prefix."}
    )
    guide: str | None = field(default=None, metadata={"help": "GIST guide encoder (adds the guide filter last)."})
    guide_margin: float | None = field(default=None, metadata={"help": "Guide filter: drop if guide >= guide_pos - m."})
    method: str = field(
        default="percpos",
        metadata={"help": "Filters in order, comma-separated: naive, shift, abs, margin, percpos, ce, vote."},
    )
    percentage: float | None = field(default=None, metadata={"help": "percpos: drop if s > pos - (1-p)|pos| (0.95)."})
    margin: float | None = field(default=None, metadata={"help": "margin: drop if score > pos - margin."})
    threshold: float | None = field(default=None, metadata={"help": "abs: drop if score > threshold."})
    shift: int | None = field(default=None, metadata={"help": "shift: skip the top N non-positive candidates."})
    scorer: str | None = field(
        default=None,
        metadata={"help": "Cross-encoder folder: stores its score of every positive and written negative (ce_score)."},
    )
    ce_margin: float | None = field(
        default=None, metadata={"help": "ce: drop if ce_score >= ce_pos - margin (default 0; also the ce vote's)."}
    )
    vote_k: int | None = field(
        default=None,
        metadata={
            "help": "vote: drop if at least K teachers (dense teacher, --guide, --scorer, a BM25 --source) call the "
            "candidate a probable positive."
        },
    )
    negatives: int = field(default=4, metadata={"help": "Negatives per query."})
    depth: int = field(default=100, metadata={"help": "Candidates per source."})
    sampler: str = field(default="top", metadata={"help": "top, uniform, weighted or top1+sampled."})
    temperature: float | None = field(default=None, metadata={"help": "weighted: softmax temperature (0.05)."})
    sources: list[str] = field(
        default_factory=lambda: ["teacher"],
        metadata={
            "help": "Candidate source, repeatable: 'teacher', a saved index directory (dense or BM25), or another "
            "dense model. Default: teacher."
        },
    )
    fusion: str = field(default="rrf", metadata={"help": "Several sources: rrf or union."})
    seed: int = field(default=0, metadata={"help": "Seed of the random samplers."})
    chunk_size: int = field(default=1024, metadata={"help": "Queries per step and checkpoint."})
    min_relevance: int = field(default=1, metadata={"help": "qrels at or above it are positives."})
    device: str | None = field(
        default=None, metadata={"help": "Torch device for the encoders (default: cuda if available)."}
    )
    index_device: str = field(default="cpu", metadata={"help": "Where FAISS searches: cpu, gpu, gpu:N, auto."})
    batch_size: int = field(default=64, metadata={"help": "Texts per encoder batch."})
    encoder_backend: str | None = field(
        default=None,
        metadata={
            "help": "What runs the teacher, guide and dense-model encoders: torch (default), onnx, onnx-int8, "
            "openvino or openvino-int8 (CPU)."
        },
    )
    cache: bool = field(default=True, metadata={"help": "Reuse cached embeddings."})

    def methods(self) -> list[str]:
        return [m.strip().lower() for m in self.method.split(",") if m.strip()]

    def bm25_source(self) -> str | None:
        """The first --source that is a saved BM25 index (it votes in a `vote` filter)."""
        for spec in self.sources:
            path = Path(spec)
            if path.is_dir() and (path / "manifest.json").is_file():
                from densekit.index.dense import read_manifest

                if read_manifest(path).get("kind") == "bm25":
                    return spec
        return None

    def voters(self) -> tuple[str, ...]:
        """The teachers that vote in a `vote` filter: the dense teacher and each one configured."""
        configured = {
            "guide": self.guide,
            "ce": self.scorer,
            "bm25": self.bm25_source() if "vote" in self.methods() else None,
        }
        return ("teacher", *(name for name, value in configured.items() if value is not None))

    def make_filters(self) -> list:
        from densekit.mining.filters import filters_from_options

        return filters_from_options(
            self.methods(),
            self.percentage,
            self.margin,
            self.threshold,
            self.shift,
            self.ce_margin,
            self.vote_k,
            self.voters(),
            self.guide_margin,
        )

    def make_sampler(self):
        from densekit.mining.samplers import sampler_from_options

        return sampler_from_options(self.sampler, self.temperature)

    def validate(self) -> None:
        """Every check that needs no model (the miner repeats the numeric ones)."""
        if self.encoder_backend is not None:
            from densekit.retriever.backends import parse_backend

            parse_backend(self.encoder_backend)
        for name in ("negatives", "depth", "chunk_size"):
            if getattr(self, name) < 1:
                raise DensekitError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise DensekitError(f"--seed must be >= 0, got {self.seed}")
        if self.guide_margin is not None and self.guide is None:
            raise DensekitError("--guide-margin is given but no --guide model")
        if self.fusion not in ("rrf", "union"):
            raise DensekitError(f"--fusion must be rrf or union, got {self.fusion!r}")
        if "ce" in self.methods() and self.scorer is None:
            raise DensekitError("method 'ce' needs a cross-encoder: --scorer FOLDER")
        if self.scorer is not None and not (Path(self.scorer) / "config.json").is_file():
            raise DensekitError(f"--scorer {self.scorer}: not a cross-encoder folder (no config.json)")
        self.make_filters()
        self.make_sampler()
        for spec in self.sources:
            path = Path(spec)
            if path.is_dir() and (path / "manifest.json").is_file():
                from densekit.retriever.compose import check_index_dir

                check_index_dir(path)


def mining_source(spec: str, teacher, corpus: Corpus, config: MiningConfig):
    """A candidate source: `teacher`, a saved index directory (any kind :func:`open_index` opens), or another
    dense model encoded now."""
    from densekit.mining.sources import DenseScorer, DenseSource, RetrieverSource

    if spec == "teacher":
        return DenseSource(teacher, name="teacher")
    path = Path(spec)
    if path.is_dir() and (path / "manifest.json").is_file():
        from densekit.retriever.compose import open_index

        return RetrieverSource(open_index(path, device=config.device), name=spec, details={"index": str(path)})
    scorer = DenseScorer(_encoder(spec, config), corpus, cache=config.cache, index_device=config.index_device)
    return DenseSource(scorer, name=spec)


def _encoder(model: str, config: MiningConfig):
    from densekit.retriever.encoder import Encoder

    return Encoder(
        model,
        device=config.device,
        batch_size=config.batch_size,
        truncate_dim=config.truncate_dim,
        backend=config.encoder_backend,
    )


def build_miner(config: MiningConfig, corpus: Corpus, teacher: DenseScorer | None = None) -> HardNegativeMiner:
    """The miner `config` describes over `corpus`: teacher (and guide) scorers, sources, filters, sampler.

    `teacher` replaces the model `config.teacher` names (re-mining with the weights being trained); it
    also serves the ``teacher`` source."""
    from densekit.mining.miner import HardNegativeMiner
    from densekit.mining.sources import DenseScorer

    config.validate()
    if teacher is None:
        teacher = DenseScorer(
            _encoder(config.teacher, config), corpus, cache=config.cache, index_device=config.index_device
        )
    guide = None
    if config.guide is not None:
        guide = DenseScorer(_encoder(config.guide, config), corpus, cache=config.cache)
    scorer = None
    if config.scorer is not None:
        from densekit.mining.teachers import CrossEncoderScorer

        scorer = CrossEncoderScorer(config.scorer, corpus, batch_size=config.batch_size, device=config.device)
    specs = config.sources or ["teacher"]
    sources = [mining_source(spec, teacher, corpus, config) for spec in specs]
    bm25 = sources[specs.index(config.bm25_source())] if "bm25" in config.voters() else None
    return HardNegativeMiner(
        teacher,
        sources,
        config.make_filters(),
        config.make_sampler(),
        negatives=config.negatives,
        depth=config.depth,
        fusion=config.fusion,
        guide=guide,
        guide_margin=config.guide_margin or 0.0,
        seed=config.seed,
        chunk_size=config.chunk_size,
        min_relevance=config.min_relevance,
        scorer=scorer,
        bm25=bm25,
    )


def mine(
    config: MiningConfig,
    data: str | Path,
    split: str,
    out: str | Path,
    resume: bool = False,
    removed_out: str | Path | None = None,
) -> tuple[MiningResult, BeirDataset]:
    """`densekit mine`: mine the judged queries of `data`'s `split` into the negatives file `out`."""
    from densekit.data import load_dataset

    config.validate()
    ds = load_dataset(data, split=split)
    miner = build_miner(config, ds.corpus)
    result = miner.mine(ds, out, resume=resume, removed_out=removed_out)
    result.config["options"] = record_options(out, config, ds.root, split)
    return result, ds


_PATH_FIELDS = ("teacher", "guide", "scorer")


@dataclass
class RecordedMining:
    """What produced a negatives file: the options, the BEIR folder and the split that were mined."""

    config: MiningConfig
    data: str
    split: str
    sidecar: dict  # the whole <out>.config.json (dataset fingerprints, models, filters, ...)


def _absolute(value: str | None) -> str | None:
    if value is None or not Path(value).exists():
        return value  # a model name resolves the same way wherever it runs
    return str(Path(value).resolve())


def record_options(out: str | Path, config: MiningConfig, data: str | Path, split: str) -> dict:
    """Add the options block (see the module docstring) to `out`'s config sidecar; return the block."""
    from densekit.io import read_json, sha256_file, write_json
    from densekit.mining.output import config_path

    mining = asdict(config)
    for name in _PATH_FIELDS:
        mining[name] = _absolute(mining[name])
    mining["sources"] = [spec if spec == "teacher" else _absolute(spec) for spec in config.sources]
    options = {
        "mining": mining,
        "data": str(Path(data).resolve()),
        "split": split,
        "negatives_sha256": sha256_file(out),
    }
    sidecar = read_json(config_path(out), IntegrityError)
    write_json(config_path(out), {**sidecar, "options": options})
    return options


def read_recorded(negatives: str | Path) -> RecordedMining:
    """The recorded mining of `negatives` (see the module docstring); DensekitError when there is none."""
    from densekit.io import read_json, sha256_file
    from densekit.mining.output import config_path

    negatives = Path(negatives)
    sidecar_path = config_path(negatives)
    again = f"mine it again with `densekit mine ... --out {negatives}`"
    if not sidecar_path.is_file():
        raise DensekitError(
            f"{negatives}: no mining configuration to re-run ({sidecar_path.name} is missing: the file was not "
            f"written by `densekit mine`); {again}"
        )
    sidecar = read_json(sidecar_path)
    options = sidecar.get("options") if isinstance(sidecar, dict) else None
    if not isinstance(options, dict) or not isinstance(options.get("mining"), dict):
        raise DensekitError(
            f"{sidecar_path}: records no mining options (written by an older densekit), so the mining cannot be "
            f"re-run exactly; {again}"
        )
    if sha256_file(negatives) != options.get("negatives_sha256"):
        raise DensekitError(
            f"{negatives}: its content differs from what {sidecar_path.name} describes (sha256), so the recorded "
            f"mining did not write it; {again}"
        )
    unknown = sorted(set(options["mining"]) - {f.name for f in fields(MiningConfig)})
    if unknown:
        raise DensekitError(f"{sidecar_path}: unknown mining option(s) {', '.join(unknown)} (a newer densekit?)")
    try:
        config = MiningConfig(**options["mining"])
        data, split = str(options["data"]), str(options["split"])
    except (KeyError, TypeError) as exc:
        raise DensekitError(f"{sidecar_path}: malformed options block ({exc})") from None
    config.validate()
    return RecordedMining(config, data, split, sidecar)
