"""Text encoder: a transformers model, pooling, optional L2 normalisation, and query/document prompts.

`Encoder` reads sentence-transformers folders (``modules.json``, ``1_Pooling/config.json``,
``sentence_bert_config.json``, a ``Normalize`` module, ``config_sentence_transformers.json`` prompts),
so ``all-MiniLM-L6-v2`` embeds exactly as in sentence-transformers, and it reads plain transformers
checkpoints with pooling given explicitly. `Encoder.save` writes a sentence-transformers folder back.

Encoding tokenises a block of texts once, sorts it by token length so each batch pads little,
runs under ``torch.inference_mode`` (fp16/bf16 on CUDA), and returns float32 numpy arrays in the
input order.

Example::

    enc = Encoder("all-MiniLM-L6-v2")
    q = enc.encode_queries(["what causes scurvy?"])      # (1, 384), unit norm
    d = enc.encode_documents(corpus.texts())
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from densekit.errors import DensekitError
from densekit.progress import announce, progress_bar
from densekit.retriever.models import model_fingerprint, resolve_model

POOLINGS = ("mean", "cls", "last")
DENSEKIT_CONFIG = "densekit_config.json"


@dataclass
class EncoderConfig:
    """How a model turns token states into one vector. Saved with every model and index."""

    pooling: str = "mean"
    normalize: bool = True
    max_length: int = 512
    do_lower_case: bool = False
    query_prompt: str = ""
    document_prompt: str = ""
    truncate_dim: int | None = None  # keep the first D dimensions (Matryoshka), before normalising
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.pooling not in POOLINGS:
            raise DensekitError(f"unknown pooling {self.pooling!r}; expected one of {', '.join(POOLINGS)}")
        if self.max_length <= 0:
            raise DensekitError(f"max_length must be positive, got {self.max_length}")


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


_POOLING_MODE_FLAGS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "lasttoken": "pooling_mode_lasttoken",
}


def read_sentence_transformers_config(folder: Path) -> EncoderConfig | None:
    """Pooling, normalisation, max length and prompts from a sentence-transformers folder, or None."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return None
    modules = _read_json(modules_path)
    config = EncoderConfig(normalize=False)
    pooling_found = False
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            pooling_cfg = _read_json(folder / module["path"] / "config.json")
            # sentence-transformers 6 writes one "pooling_mode" string instead of the boolean flags
            if pooling_cfg.get("pooling_mode") in _POOLING_MODE_FLAGS:
                pooling_cfg = {_POOLING_MODE_FLAGS[pooling_cfg["pooling_mode"]]: True}
            if pooling_cfg.get("pooling_mode_mean_tokens"):
                config.pooling = "mean"
            elif pooling_cfg.get("pooling_mode_cls_token"):
                config.pooling = "cls"
            elif pooling_cfg.get("pooling_mode_lasttoken"):
                config.pooling = "last"
            else:
                modes = {k: v for k, v in pooling_cfg.items() if k.startswith("pooling_mode") and v}
                raise DensekitError(f"{folder}: pooling {modes} is not supported (mean, cls, last-token are)")
            pooling_found = True
        elif kind.endswith("Normalize"):
            config.normalize = True
        elif kind.endswith(("Transformer",)):
            continue
        else:
            raise DensekitError(f"{folder}/modules.json: module type {kind!r} is not supported by densekit")
    if not pooling_found:
        raise DensekitError(f"{folder}/modules.json: no Pooling module")
    sbert = folder / "sentence_bert_config.json"
    if sbert.is_file():
        cfg = _read_json(sbert)
        config.max_length = int(cfg.get("max_seq_length") or config.max_length)
        config.do_lower_case = bool(cfg.get("do_lower_case", False))
        tokenizer_cfg = folder / "tokenizer_config.json"
        if "max_seq_length" not in cfg and tokenizer_cfg.is_file():
            # sentence-transformers 6 keeps the limit as the tokenizer's model_max_length
            limit = _read_json(tokenizer_cfg).get("model_max_length")
            if isinstance(limit, int) and 0 < limit < 100_000:
                config.max_length = limit
    st_cfg = folder / "config_sentence_transformers.json"
    if st_cfg.is_file():
        prompts = _read_json(st_cfg).get("prompts") or {}
        config.query_prompt = prompts.get("query", "")
        config.document_prompt = prompts.get("document", prompts.get("passage", ""))
    return config


def pick_device(device: str | None = None) -> torch.device:
    """`device` if given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool token states `(batch, seq, dim)` with attention `mask` `(batch, seq)` into `(batch, dim)`."""
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        # Works for right and left padding: the last position whose mask is 1.
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = (positions * mask).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise DensekitError(f"unknown pooling {pooling!r}")


class Encoder:
    """A dense text encoder (see module docstring).

    Args:
        model: a folder, or a name :func:`~densekit.retriever.models.resolve_model` can find.
        device: "cpu", "cuda", "cuda:1"...; default CUDA when available.
        pooling, normalize, max_length, query_prompt, document_prompt: override the folder's config
            (a plain transformers folder uses mean pooling, normalisation and 512 tokens by default).
        dtype: "float32", "float16" or "bfloat16". Default float16 on CUDA, float32 on CPU.
        batch_size: texts per forward pass.
        truncate_dim: keep the first D dimensions of each embedding, re-normalised when the model
            normalises (Matryoshka models keep most of their quality; see docs/training.md). Part of
            :meth:`fingerprint` (so the embedding cache never mixes dimensions) and of :meth:`describe`
            (so an index records it and reopens with it).
        backend: what runs the transformer: "torch" (None means torch), "onnx" (ONNX Runtime) or
            "openvino", on CPU (:mod:`densekit.retriever.backends`), optionally with the quantisation
            after a dash as the CLI's `--encoder-backend` writes it ("onnx-int8"); pooling and
            normalisation are densekit's either way.
        quantize: "int8" runs the folder's int8 export (onnx: dynamic; openvino: static); the same as
            the "-int8" suffix of `backend`. A folder without the export is exported into densekit's
            cache first (announced).
    """

    def __init__(
        self,
        model: str | Path,
        device: str | None = None,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        dtype: str | None = None,
        batch_size: int = 64,
        truncate_dim: int | None = None,
        backend: str | None = "torch",
        quantize: str | None = None,
    ) -> None:
        from densekit.retriever.backends import check_backend, parse_backend

        backend, suffix = parse_backend(backend or "torch")
        if quantize is not None and suffix is not None and quantize != suffix:
            raise DensekitError(f"backend {backend}-{suffix} and quantize={quantize!r} disagree; give one")
        quantize = quantize or suffix
        check_backend(backend, quantize)
        self.model_name = str(model)
        self.backend, self.quantize = backend, quantize
        self.folder = resolve_model(model)
        self.config = self._load_config(self.folder)
        for key, value in (
            ("pooling", pooling),
            ("normalize", normalize),
            ("max_length", max_length),
            ("query_prompt", query_prompt),
            ("document_prompt", document_prompt),
        ):
            if value is not None:
                setattr(self.config, key, value)
        self.config.validate()
        self.device = pick_device(device)
        self.dtype = self._pick_dtype(dtype)
        self.batch_size = batch_size
        self.last_cut = 0  # texts of the last encode() call longer than the window (cut)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.runner = None
        self.backend_file: Path | None = None
        self._model: torch.nn.Module | None = None
        if backend == "torch":  # the weights load on first use (:attr:`model`): not for cached embeddings
            self.model_config = AutoConfig.from_pretrained(self.folder)
        else:
            self._open_runner()
        tokenizer_max = getattr(self.tokenizer, "model_max_length", None) or self.config.max_length
        position_max = getattr(self.model_config, "max_position_embeddings", None) or self.config.max_length
        self.config.max_length = min(self.config.max_length, tokenizer_max, position_max)
        if truncate_dim is not None:
            self.config.truncate_dim = truncate_dim
        hidden = int(self.model_config.hidden_size)
        if self.config.truncate_dim is not None and not 0 < self.config.truncate_dim <= hidden:
            raise DensekitError(
                f"--truncate-dim must be between 1 and the model's dimension {hidden}, got {self.config.truncate_dim}"
            )

    def _open_runner(self) -> None:
        """The ONNX/OpenVINO runner; no torch weights are loaded (`self.model` is None)."""
        from densekit.retriever.backends import open_runner
        from densekit.retriever.backends.export import exported_file

        if self.device.type != "cpu":
            raise DensekitError(f"the {self.backend} backend runs on CPU; use --device cpu (or the torch backend)")
        self.model_config = AutoConfig.from_pretrained(self.folder)
        self.backend_file = exported_file(
            self.folder,
            self.backend,
            self.quantize,
            self._base_fingerprint(),
            lambda: AutoModel.from_pretrained(self.folder, dtype=torch.float32),
            self.tokenizer,
        )
        self.runner = open_runner(self.backend_file, self.backend, torch.get_num_threads())

    @property
    def model(self) -> torch.nn.Module | None:
        """The torch model, loaded on first use (None on the ONNX/OpenVINO backends).

        An encoder whose embeddings all come from the cache never loads its weights: a warm
        ``densekit mine`` or ``eval`` reads vectors and the fingerprint (hashed files), nothing more.
        """
        if self._model is None and self.backend == "torch":
            model = AutoModel.from_pretrained(self.folder, dtype=self.dtype)
            self._model = model.to(self.device).eval()
        return self._model

    @staticmethod
    def _load_config(folder: Path) -> EncoderConfig:
        own = folder / DENSEKIT_CONFIG
        st = read_sentence_transformers_config(folder)
        if own.is_file():
            data = _read_json(own)
            return EncoderConfig(**{k: v for k, v in data.items() if k in EncoderConfig.__dataclass_fields__})
        return st if st is not None else EncoderConfig()

    def _pick_dtype(self, dtype: str | None) -> torch.dtype:
        names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        if dtype is None:
            return torch.float16 if self.device.type == "cuda" else torch.float32
        if dtype not in names:
            raise DensekitError(f"unknown dtype {dtype!r}; expected one of {', '.join(names)}")
        if names[dtype] != torch.float32 and self.device.type == "cpu":
            announce(f"{dtype} on CPU is slow and less precise; float32 is the usual choice there")
        return names[dtype]

    @property
    def dim(self) -> int:
        return int(self.config.truncate_dim or self.model_config.hidden_size)

    @property
    def model_id(self) -> str:
        return self.model_name

    def _base_fingerprint(self) -> str:
        settings = json.dumps(self._settings(), sort_keys=True)
        return f"{model_fingerprint(str(self.folder))}:{settings}"

    @property
    def backend_name(self) -> str:
        """torch, onnx, onnx-int8, openvino or openvino-int8."""
        return self.backend + (f"-{self.quantize}" if self.quantize else "")

    def fingerprint(self) -> str:
        """Identifies weights + encoding config (+ the backend and its exported file, when not torch):
        equal fingerprints give equal embeddings."""
        if self.runner is None:
            return self._base_fingerprint()
        from densekit.io import sha256_file

        return f"{self._base_fingerprint()}|{self.backend_name}:{sha256_file(self.backend_file)[:16]}"

    def describe(self) -> dict:
        """What an index manifest records about the model."""
        return {
            "model": self.model_name,
            "model_folder": str(self.folder),
            "fingerprint": self.fingerprint(),
            "dim": self.dim,
            **({"backend": self.backend_name} if self.runner is not None else {}),
            **{k: v for k, v in self._settings().items() if k != "extra"},
        }

    def _settings(self) -> dict:
        """The encoding config; truncate_dim only when set, so untruncated fingerprints stay as they were."""
        settings = asdict(self.config)
        if settings["truncate_dim"] is None:
            del settings["truncate_dim"]
        return settings

    def encode_queries(self, texts: list[str], batch_size: int | None = None, show_progress: bool = True) -> np.ndarray:
        return self.encode(
            texts,
            prompt=self.config.query_prompt,
            batch_size=batch_size,
            desc="encoding queries",
            show_progress=show_progress,
        )

    def encode_documents(
        self, texts: list[str], batch_size: int | None = None, show_progress: bool = True
    ) -> np.ndarray:
        return self.encode(
            texts,
            prompt=self.config.document_prompt,
            batch_size=batch_size,
            desc="encoding documents",
            show_progress=show_progress,
        )

    def tokenize(self, texts: list[str]) -> dict[str, list[list[int]]]:
        if self.config.do_lower_case:
            texts = [t.lower() for t in texts]
        return self.tokenizer(texts, truncation=True, max_length=self.config.max_length, padding=False)

    def _count_cut(self, texts: list[str], ids: list[list[int]]) -> int:
        """How many of `texts` (tokenized with truncation into `ids`) are longer than the window."""
        full = [t for t, i in zip(texts, ids, strict=True) if len(i) >= self.config.max_length]
        if not full:
            return 0
        if self.config.do_lower_case:
            full = [t.lower() for t in full]
        lengths = self.tokenizer(full, truncation=False, verbose=False)["input_ids"]
        return sum(len(i) > self.config.max_length for i in lengths)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token ids -> pooled (and normalised, if configured) embeddings, with autograd if enabled."""
        out = self.model(**batch)
        emb = pool(out.last_hidden_state, batch["attention_mask"], self.config.pooling)
        if self.config.truncate_dim is not None:
            emb = emb[:, : self.config.truncate_dim]
        if self.config.normalize:
            emb = torch.nn.functional.normalize(emb.float(), p=2, dim=1)
        return emb

    def _run_exported(self, features: dict) -> np.ndarray:
        """One batch through the ONNX/OpenVINO runner, pooled, cut and normalised as :meth:`forward` does."""
        arrays = self.tokenizer.pad(features, padding=True, return_tensors="np")
        hidden = torch.from_numpy(self.runner(dict(arrays)))
        emb = pool(hidden, torch.from_numpy(arrays["attention_mask"]), self.config.pooling)
        if self.config.truncate_dim is not None:
            emb = emb[:, : self.config.truncate_dim]
        if self.config.normalize:
            emb = torch.nn.functional.normalize(emb.float(), p=2, dim=1)
        return emb.float().numpy()

    def encode(
        self,
        texts: list[str],
        prompt: str = "",
        batch_size: int | None = None,
        desc: str = "encoding",
        show_progress: bool = True,
        block_size: int = 16384,
    ) -> np.ndarray:
        """Embed `texts` (prefixed with `prompt`) into a float32 array `(len(texts), dim)`.

        Texts longer than the model's window are cut at `max_length` tokens; how many were is left in
        :attr:`last_cut` (callers announce it: the rest of such a text is never seen)."""
        batch_size = batch_size or self.batch_size
        self.last_cut = 0
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        bar = progress_bar(desc, total=len(texts), unit="text") if show_progress else None
        with torch.inference_mode():
            for start in range(0, len(texts), block_size):
                block = texts[start : start + block_size]
                if prompt:
                    block = [prompt + t for t in block]
                encoded = self.tokenize(block)
                ids = encoded["input_ids"]
                self.last_cut += self._count_cut(block, ids)
                order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
                for b in range(0, len(order), batch_size):
                    chosen = order[b : b + batch_size]
                    features = {key: [encoded[key][i] for i in chosen] for key in encoded}
                    if self.runner is not None:
                        emb = self._run_exported(features)
                    else:
                        batch = self.tokenizer.pad(features, padding=True, return_tensors="pt")
                        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                        emb = self.forward(batch).float().cpu().numpy()
                    out[[start + i for i in chosen]] = emb
                    if bar is not None:
                        bar.update(len(chosen))
        if bar is not None:
            bar.close()
        return out

    def save(self, folder: str | Path, model: torch.nn.Module | None = None, overwrite: bool = False) -> Path:
        """Write a sentence-transformers folder (plus densekit's config) that both libraries load.

        An existing `folder` must be a model densekit wrote (or empty) unless `overwrite`."""
        from densekit.io import atomic_dir

        folder = Path(folder)
        if model is None and self.model is None:
            raise DensekitError(f"an encoder on the {self.backend} backend has no torch weights to save")
        with atomic_dir(folder, kind="model", overwrite=overwrite) as staging:
            write_sentence_transformers_folder(staging, model or self.model, self.tokenizer, self.config)
        return folder


def write_sentence_transformers_folder(folder: Path, model: torch.nn.Module, tokenizer, config: EncoderConfig) -> None:
    """Weights, tokenizer, modules.json, pooling, Normalize and prompts in sentence-transformers' layout."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if config.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "1_Pooling").mkdir(exist_ok=True)
    dim = int(model.config.hidden_size)
    pooling = {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": config.pooling == "cls",
        "pooling_mode_mean_tokens": config.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_lasttoken": config.pooling == "last",
        "include_prompt": True,
    }
    files = {
        "modules.json": modules,
        "1_Pooling/config.json": pooling,
        "sentence_bert_config.json": {"max_seq_length": config.max_length, "do_lower_case": config.do_lower_case},
        "config_sentence_transformers.json": {
            "prompts": {"query": config.query_prompt, "document": config.document_prompt},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine" if config.normalize else "dot",
        },
        DENSEKIT_CONFIG: asdict(config),
    }
    for name, content in files.items():
        with open(folder / name, "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2)
