"""Option types shared by several commands, each declared once, and Typer options built from dataclasses.

Help text that a library config also carries is read from the dataclass field's metadata
(`field(metadata={"help": ...})`, Tevatron's arguments.py habit), so it is written once.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from densekit.chunking import ChunkConfig
from densekit.index.config import IndexBuildConfig
from densekit.retriever.compose import RetrieverSpec, SearchOptions


def help_of(cls: type, name: str) -> str:
    """The help text a config dataclass declares for its field `name`."""
    return next(f.metadata.get("help", "") for f in fields(cls) if f.name == name)


# -- every command -----------------------------------------------------------------------------------
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or library log lines.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint.")]
RestartOpt = Annotated[  # the trainers' --overwrite: start a run over (OverwriteOpt below is for outputs)
    bool,
    typer.Option(
        "--overwrite",
        help="Start over in an output folder that holds a run (its checkpoints, model/, best/ "
        "and metrics are removed first).",
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace the output even if densekit did not write it (a folder of other files, a file, "
        "another kind of output).",
    ),
]
FormatOpt = Annotated[str, typer.Option("--format", help="Output: text, markdown (a README table) or json.")]

# -- inputs ------------------------------------------------------------------------------------------
DataArg = Annotated[str, typer.Argument(help="BEIR folder or dataset name.")]
IndexDirArg = Annotated[Path, typer.Argument(help="Index directory.")]

# -- encoders ----------------------------------------------------------------------------------------
DeviceOpt = Annotated[str | None, typer.Option(help=help_of(RetrieverSpec, "device"))]
BatchOpt = Annotated[int, typer.Option("--batch-size", help=help_of(RetrieverSpec, "batch_size"))]
CacheOpt = Annotated[bool, typer.Option("--cache/--no-cache", help=help_of(RetrieverSpec, "cache"))]
EncoderBackendOpt = Annotated[
    str | None, typer.Option("--encoder-backend", help=help_of(RetrieverSpec, "encoder_backend"))
]
TruncateDimOpt = Annotated[int | None, typer.Option("--truncate-dim", help=help_of(RetrieverSpec, "truncate_dim"))]

# -- BM25 --------------------------------------------------------------------------------------------
BM25Opt = Annotated[bool, typer.Option("--bm25", help=help_of(RetrieverSpec, "bm25"))]
BackendOpt = Annotated[str | None, typer.Option(help=help_of(RetrieverSpec, "backend"))]
K1Opt = Annotated[float, typer.Option("--k1", help=help_of(RetrieverSpec, "k1"))]
BOpt = Annotated[float, typer.Option("--b", help=help_of(RetrieverSpec, "b"))]
ThreadsOpt = Annotated[int, typer.Option(help=help_of(RetrieverSpec, "threads"))]

# -- passages of long documents ----------------------------------------------------------------------
ChunkSizeOpt = Annotated[int | None, typer.Option("--chunk-size", help=help_of(ChunkConfig, "chunk_size"))]
ChunkOverlapOpt = Annotated[int, typer.Option("--chunk-overlap", help=help_of(ChunkConfig, "chunk_overlap"))]
AggregateOpt = Annotated[str, typer.Option("--aggregate", help=help_of(ChunkConfig, "aggregate"))]
AggregateOverrideOpt = Annotated[str | None, typer.Option("--aggregate", help=help_of(RetrieverSpec, "aggregate"))]

# -- building FAISS indexes --------------------------------------------------------------------------
FactoryOpt = Annotated[str, typer.Option(help=help_of(IndexBuildConfig, "factory"))]
TrainSampleOpt = Annotated[int | None, typer.Option("--train-sample", help=help_of(IndexBuildConfig, "train_sample"))]
BuildDeviceOpt = Annotated[str, typer.Option("--index-device", help=help_of(IndexBuildConfig, "device"))]
ShardGpusOpt = Annotated[bool, typer.Option("--shard-gpus/--replicate-gpus", help=help_of(IndexBuildConfig, "shard"))]
Float16Opt = Annotated[bool, typer.Option("--float16/--float32", help=help_of(IndexBuildConfig, "float16"))]
StoreTextsOpt = Annotated[
    bool,
    typer.Option(
        "--store-texts/--no-store-texts",
        help="Keep the document texts in the index (docs.jsonl) for search output and RAG.",
    ),
]

# -- searching FAISS indexes -------------------------------------------------------------------------
NprobeOpt = Annotated[int | None, typer.Option("--nprobe", help=help_of(SearchOptions, "nprobe"))]
EfSearchOpt = Annotated[int | None, typer.Option("--ef-search", help=help_of(SearchOptions, "ef_search"))]
KFactorOpt = Annotated[int | None, typer.Option("--k-factor", help=help_of(SearchOptions, "k_factor"))]
SearchDeviceOpt = Annotated[str, typer.Option("--index-device", help=help_of(SearchOptions, "index_device"))]
RerankVectorsOpt = Annotated[
    Path | None, typer.Option("--rerank-vectors", help=help_of(SearchOptions, "rerank_vectors"))
]
RerankCandidatesOpt = Annotated[
    int, typer.Option("--rerank-candidates", help=help_of(SearchOptions, "rerank_candidates"))
]
RescoreMultiplierOpt = Annotated[
    int | None, typer.Option("--rescore-multiplier", help=help_of(SearchOptions, "rescore_multiplier"))
]
BuildRescoreOpt = Annotated[
    int | None, typer.Option("--rescore-multiplier", help=help_of(IndexBuildConfig, "rescore_multiplier"))
]


# -- Typer options from a dataclass --------------------------------------------------------------------


def _parameters(cls: type) -> list[tuple[str, inspect.Parameter]]:
    """(dataclass path, parameter) for every field of `cls`, nested dataclasses flattened into their fields.

    A field's option is `--kebab-name` unless its metadata names flags (`"flags": ("--lr",)`); its help is
    the metadata's "help"; a field without a default is a required option.
    """
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, inspect.Parameter]] = []
    for f in fields(cls):
        hint = hints[f.name]
        if is_dataclass(hint):
            out += [(f"{f.name}.{path}", param) for path, param in _parameters(hint)]
            continue
        flags = f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),)
        if hint is bool and len(flags) == 1 and "/" not in flags[0]:
            flags = (f"{flags[0]}/--no-{flags[0][2:]}",)
        default = (
            f.default
            if f.default is not MISSING
            else (f.default_factory() if f.default_factory is not MISSING else inspect.Parameter.empty)
        )
        option = typer.Option(*flags, help=f.metadata.get("help", ""))
        out.append(
            (
                f.name,
                inspect.Parameter(
                    f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[hint, option]
                ),
            )
        )
    return out


def _build(cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {
        f.name: _build(hints[f.name], values) if is_dataclass(hints[f.name]) else values[f.name]
        for f in fields(cls)
        if is_dataclass(hints[f.name]) or f.name in values
    }
    return cls(**kwargs)


def config_options(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command `func(config: cls, **other_options)` so that Typer shows one option per field of
    `cls` (nested dataclasses flattened) and the command receives the built config.

    Field names must be unique across the nesting; they become the options' names.
    """
    params = _parameters(cls)
    names = [p.name for _, p in params]
    if len(set(names)) != len(names):
        raise TypeError(f"{cls.__name__}: nested field names collide, cannot flatten into options")

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(func).parameters.values())[1:]
        own_hints = typing.get_type_hints(func, include_extras=True)

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            config = _build(cls, {name: kwargs.pop(name) for name in names})
            return func(config, **kwargs)

        signature = [p for _, p in params] + [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=own_hints[p.name]) for p in own
        ]
        command.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in signature}
        del command.__wrapped__  # Typer must read the signature above, not func's
        return command

    return decorate
