"""`densekit finetune`: the whole recipe as one resumable run of cached stages.

Stages, each in its own folder of the finetune folder ``DIR``:

1. ``split/``     a dev slice held out of the training split (:mod:`densekit.splits`): ``split/data`` is a
                  BEIR folder with ``train`` and ``dev`` qrels and no other split;
2. ``mine/``      hard negatives of the ``train`` part, mined with the base model;
3. ``reranker/``  a cross-encoder trained on them (``densekit train-reranker``), its step chosen on dev,
                  where it reranks the base model's top ``rerank_depth`` (``dev-base.trec``);
4. ``score/``     the teacher check: the cross-encoder teaches only if its dev ndcg@10 beats the base
                  model's by more than ``teacher_min_gain``. If it does, the negatives are mined again
                  with its scores stored (``ce_score``) and, by default, its false-negative filter
                  (``mine --scorer``); if not, the mined negatives are kept and only ``none`` trains;
5. ``train/``     one bi-encoder per distillation candidate (``densekit train``, optional re-mining), each
                  evaluated on dev during training; the best step of the best candidate on dev is kept;
6. ``refit/``     only with ``refit``: the chosen candidate trained again on the whole training split
                  (dev slice included), negatives mined for every query the same way, to the chosen step
                  scaled to the larger split; its model is the one delivered (status ``off`` otherwise);
7. ``eval/``      dev and test metrics of the base model, the fine-tuned model and the fine-tuned model
                  reranked by the cross-encoder, and the refit model's test metrics. The test split is
                  read here and nowhere else.

Every stage writes ``started.json`` (its inputs) when it starts and ``done.json`` (inputs, fingerprint,
outputs) when it ends. A stage's inputs are the settings it reads (:data:`~densekit.finetune.config.STAGE_FIELDS`)
and the fingerprint of the stage before it, so a rerun skips every done stage whose inputs are unchanged;
a changed setting re-runs the first stage that reads it and all after it (announced); a stage that
was interrupted resumes (the trainers from their newest checkpoint, mining from its partial file).

``DIR`` must be absent, empty or a finetune folder (its ``.densekit.json`` says so); anything else is
refused. Only the stage folders inside it are ever removed, and only when a stage starts afresh.
At the end ``DIR`` holds ``model/`` (the chosen bi-encoder, or its refit), ``cross-encoder/``, ``negatives.jsonl``,
``report.json``, ``report.md`` and ``dev_ndcg.png`` (:mod:`~densekit.finetune.report`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from densekit.errors import DensekitError
from densekit.finetune.config import ADDED_LATER, STAGE_FIELDS, STAGES, FinetuneConfig
from densekit.io import (
    MARKER,
    atomic_dir,
    atomic_file,
    check_output_target,
    read_json,
    read_marker,
    write_json,
    write_lock,
)
from densekit.progress import announce, stage

KIND = "finetune"
STARTED, DONE = "started.json", "done.json"


def fingerprint_of(inputs: dict) -> str:
    """sha256 of a stage's inputs (canonical JSON)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def prepare_output(output: Path) -> None:
    """Claim `output` as a finetune folder: absent, empty or one already; anything else is refused."""
    check_output_target(output, KIND)
    output.mkdir(parents=True, exist_ok=True)
    if read_marker(output) is None:
        write_json(output / MARKER, {"kind": KIND, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


DIGESTS = ".source-digests.json"


def _content_digest(path: Path, cache_file: Path) -> str:
    """sha256 of `path`, cached in `cache_file` under (path, size, mtime): a large corpus is hashed once,
    and a copy or restore that only changes the modification time still has the same identity."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = read_json(cache_file) if cache_file.is_file() else {}
    if key not in cache:
        from densekit.io import sha256_file

        cache = {k: v for k, v in cache.items() if not k.startswith(f"{path.resolve()}|")} | {key: sha256_file(path)}
        write_json(cache_file, cache)
    return cache[key]


def _source_identity(data: str, split: str, cache_file: Path) -> dict:
    """What identifies the source dataset: the split's qrels, the queries and the corpus by content (sha256;
    the corpus digest cached by size and modification time in `cache_file`, see :func:`_content_digest`)."""
    from densekit.data import qrels_path, resolve_dataset
    from densekit.io import sha256_file

    root = resolve_dataset(data)
    identity: dict[str, Any] = {"root": str(root.resolve()), "qrels": sha256_file(qrels_path(root, split))}
    for name in ("queries.jsonl", "queries.jsonl.gz", "corpus.jsonl", "corpus.jsonl.gz"):
        path = root / name
        if path.is_file():
            identity[name] = sha256_file(path) if name.startswith("queries") else _content_digest(path, cache_file)
    return identity


class Pipeline:
    """Runs a :class:`FinetuneConfig` stage by stage (see the module docstring); `until` stops after that stage."""

    def __init__(self, config: FinetuneConfig, until: str | None = None) -> None:
        config.validate()
        if config.precision != "no":  # refused here, not after mining: e.g. bf16 on a CPU without it
            from densekit.retriever.train.loop import check_precision, device_type_of

            check_precision(config.precision, device_type_of(config.device))
        if until is not None and until not in STAGES:
            raise DensekitError(f"unknown stage {until!r}; expected one of {', '.join(STAGES)}")
        self.config = config
        self.until = until
        self.output = Path(config.output)  # type: ignore[arg-type]
        self.stages: dict[str, dict] = {}
        self.outputs: dict[str, dict] = {}
        self._upstream: str | None = None

    # ---------------------------------------------------------------- the stage machinery
    def _inputs(self, name: str, extra: dict | None = None) -> dict:
        cfg = self.config.to_json()
        read = {k: cfg[k] for k in STAGE_FIELDS[name] if not (k in ADDED_LATER and cfg[k] == ADDED_LATER[k])}
        return {"upstream": self._upstream, **read, **(extra or {})}

    def _stage(self, name: str, body: Callable[[Path, bool], dict], extra: dict | None = None) -> dict:
        """Skip `name` when done with these inputs, else run `body(folder, resume)`; returns its outputs."""
        folder = self.output / name
        inputs = self._inputs(name, extra)
        print_ = f"stage {STAGES.index(name) + 1}/{len(STAGES)} {name}"
        fp = fingerprint_of(inputs)
        done = read_json(folder / DONE) if (folder / DONE).is_file() else None
        if done is not None and done.get("fingerprint") == fp:
            announce(f"{print_}: done before with the same inputs, skipped")
            self._finish(name, fp, done["outputs"], "skipped", done.get("seconds", 0.0))
            return done["outputs"]
        started = read_json(folder / STARTED) if (folder / STARTED).is_file() else None
        resume = done is None and started is not None and started.get("fingerprint") == fp
        previous = (done or started or {}).get("inputs")
        if resume:
            announce(f"{print_}: resuming an interrupted run")
        elif previous is not None:
            changed = sorted(k for k in set(inputs) | set(previous) if inputs.get(k) != previous.get(k))
            why = "an earlier stage re-ran" if changed == ["upstream"] else f"{', '.join(changed)} changed"
            announce(f"{print_}: {why}; re-running it and every stage after it")
        if not resume and folder.exists():
            shutil.rmtree(folder)  # a stage folder of this finetune folder (prepare_output checked it)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / STARTED, {"stage": name, "inputs": inputs, "fingerprint": fp})
        start = time.perf_counter()
        with stage(print_):
            outputs = body(folder, resume)
        seconds = round(time.perf_counter() - start, 3)
        write_json(
            folder / DONE, {"stage": name, "inputs": inputs, "fingerprint": fp, "outputs": outputs, "seconds": seconds}
        )
        self._finish(name, fp, outputs, "ran", seconds)
        return outputs

    def _finish(self, name: str, fp: str, outputs: dict, status: str, seconds: float) -> None:
        self._upstream = fp
        self.outputs[name] = outputs
        self.stages[name] = {"status": status, "seconds": seconds, "fingerprint": fp[:16]}

    # ---------------------------------------------------------------- the run
    def run(self) -> dict:
        """Run (or skip) every stage up to `until`; write the report after the last one. Returns a summary."""
        prepare_output(self.output)
        cfg = self.config
        test = None if cfg.test_split == "none" else cfg.test_split
        digests = self.output / DIGESTS
        # Identities of the source files, computed when their stage comes (the test qrels only at eval).
        bodies = {
            "split": (self._split, lambda: {"source": _source_identity(cfg.data, cfg.train_split, digests)}),  # type: ignore[arg-type]
            "mine": (self._mine, dict),
            "reranker": (self._reranker, dict),
            "score": (self._score, dict),
            "train": (self._train, dict),
            "refit": (self._refit, lambda: {"source": _source_identity(cfg.data, cfg.train_split, digests)}),  # type: ignore[arg-type]
            "eval": (self._eval, lambda: {"test": test and _source_identity(cfg.data, test, digests)}),  # type: ignore[arg-type]
        }
        with write_lock(self.output):  # one finetune run per folder at a time
            for name in STAGES:
                if (name == "refit" and not cfg.refit) or (name == "reranker" and not cfg.cross_encoder):
                    # off: not in the chain, so the next stage's inputs stay the same
                    self.stages[name] = {"status": "off", "seconds": 0.0, "fingerprint": None}
                else:
                    body, extra = bodies[name]
                    self._stage(name, body, extra())
                if name == self.until:
                    break
        summary: dict[str, Any] = {"output": str(self.output), "stages": self.stages, "report": None}
        if "eval" in self.outputs:
            from densekit.finetune.report import write_report

            summary.update(write_report(self.output, cfg, self.outputs, self.stages))
        return summary

    # ---------------------------------------------------------------- stages
    def _rel(self, path: Path) -> str:
        """Outputs record paths relative to the finetune folder, so the folder can move."""
        return str(path.relative_to(self.output))

    def path(self, stage_name: str, key: str) -> Path:
        """The file or folder output `key` of stage `stage_name`, as a path."""
        return self.output / self.outputs[stage_name][key]

    @property
    def data_dir(self) -> Path:
        return self.path("split", "data")

    def _split(self, folder: Path, resume: bool) -> dict:
        from densekit.splits import write_holdout

        cfg = self.config
        info = write_holdout(cfg.data, cfg.train_split, folder / "data", cfg.dev_fraction, cfg.split_seed)  # type: ignore[arg-type]
        return {"data": self._rel(folder / "data"), **info}

    def _mining(self, scorer: str | None = None) -> Any:
        from densekit.mining.config import MiningConfig

        cfg = self.config
        methods = [m.strip() for m in cfg.mine_method.split(",") if m.strip()]
        if scorer is not None and cfg.ce_filter:
            methods = ["ce"] if methods == ["naive"] else [*methods, "ce"]
        return MiningConfig(
            teacher=cfg.model,  # type: ignore[arg-type]
            method=",".join(methods),
            percentage=cfg.mine_percentage if "percpos" in methods else None,
            margin=cfg.mine_margin,
            threshold=cfg.mine_threshold,
            scorer=scorer,
            ce_margin=cfg.ce_margin if "ce" in methods else None,
            negatives=cfg.mine_negatives,
            depth=(cfg.score_depth or cfg.mine_depth) if scorer is not None else cfg.mine_depth,
            seed=cfg.teacher_seed,
            device=cfg.device,
            batch_size=cfg.encode_batch_size,
        )

    def _run_mining(self, folder: Path, scorer: str | None) -> dict:
        from densekit.mining.config import mine
        from densekit.mining.miner import checkpoint_path

        out = folder / "negatives.jsonl"
        result, _ = mine(self._mining(scorer), self.data_dir, "train", out, resume=checkpoint_path(out).is_file())
        stats = result.stats.to_json()
        return {"negatives": self._rel(out), "queries": stats.get("queries"), "resumed_at": result.resumed_at}

    def _mine(self, folder: Path, resume: bool) -> dict:
        return self._run_mining(folder, None)

    def _first_stage_dev(self, folder: Path) -> tuple[Path, float]:
        """The base model's dev run (top `rerank_depth`, TREC) that the cross-encoder reranks on dev, and
        its ndcg@10: the number the cross-encoder must beat to teach."""
        from densekit.data import Run, load_dataset
        from densekit.eval.harness import evaluate_run
        from densekit.retriever.dense import DenseRetriever
        from densekit.retriever.encoder import Encoder

        cfg = self.config
        path = folder / "dev-base.trec"
        dev = load_dataset(self.data_dir, split="dev")
        if path.is_file():  # written atomically by an interrupted run of this stage
            run = Run.read_trec(path)
        else:
            encoder = Encoder(cfg.model, device=cfg.device, batch_size=cfg.encode_batch_size)  # type: ignore[arg-type]
            run = DenseRetriever.build(encoder, dev.corpus).search(dev.queries, cfg.rerank_depth)
            run.write_trec(path, tag="base")
        return path, float(evaluate_run(run, dev, ("ndcg@10",)).result.metrics["ndcg@10"])

    def _teacher_verdict(self) -> dict:
        """Whether the cross-encoder beat the base model on dev by more than `teacher_min_gain`."""
        if not self.config.cross_encoder:
            announce("no cross-encoder (--no-cross-encoder): the mined negatives train the 'none' candidate alone")
            return {"teaches": False, "ce_dev_ndcg@10": None, "base_dev_ndcg@10": None, "gain": None, "off": True}
        reranker = self.outputs["reranker"]
        base = reranker["base_dev_ndcg@10"]
        ce = (reranker["best"] or {}).get("ndcg@10")
        gain = None if ce is None else ce - base
        teaches = gain is not None and gain > self.config.teacher_min_gain
        verdict = {"teaches": teaches, "ce_dev_ndcg@10": ce, "base_dev_ndcg@10": base, "gain": gain}
        if not teaches:
            measured = "was not evaluated on dev" if ce is None else f"reranks the dev slice to ndcg@10 {ce:.4f}"
            announce(
                f"the cross-encoder {measured}, the base model alone scores {base:.4f}: not better by more than "
                f"teacher_min_gain {self.config.teacher_min_gain}, so it does not teach (mined negatives kept, "
                "no distillation candidate but none)"
            )
        return verdict

    def _score(self, folder: Path, resume: bool) -> dict:
        verdict = self._teacher_verdict()
        if not verdict["teaches"]:
            out = folder / "negatives.jsonl"
            with open(self.path("mine", "negatives"), "rb") as src, atomic_file(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return {"negatives": self._rel(out), "queries": self.outputs["mine"]["queries"], "teacher": verdict}
        return {**self._run_mining(folder, str(self.path("reranker", "model"))), "teacher": verdict}

    def _reranker(self, folder: Path, resume: bool) -> dict:
        from densekit.retriever.train.cross_encoder import train_reranker
        from densekit.retriever.train.reranker_config import RerankerDataConfig, RerankerTrainConfig

        cfg = self.config
        run = folder / "run"
        first_stage, base_ndcg = self._first_stage_dev(folder)
        config = RerankerTrainConfig(
            model=cfg.ce_model or cfg.model,  # type: ignore[arg-type]
            output=run,
            data=RerankerDataConfig(
                negatives=self.path("mine", "negatives"),
                corpus=str(self.data_dir),
                negatives_per_query=cfg.ce_negatives,
                skip_queries_without_negatives=True,
            ),
            loss=cfg.ce_loss,
            epochs=cfg.ce_epochs,
            max_steps=cfg.ce_max_steps,
            batch_size=cfg.ce_batch_size,
            learning_rate=cfg.ce_lr,
            seed=cfg.teacher_seed,
            max_length=cfg.ce_max_length,
            eval_data=str(self.data_dir),
            eval_split="dev",
            eval_candidates=first_stage,
            eval_depth=cfg.rerank_depth,
            eval_steps=cfg.ce_eval_steps,
            save_steps=cfg.save_steps,
            device=cfg.device,
            precision=cfg.precision,
        )
        summary = train_reranker(config, resume=resume and run.exists())
        model = run / "best" if (run / "best").is_dir() else run / "model"
        return {
            "model": self._rel(model),
            "best": summary["best"],
            "steps": summary["steps"],
            "base_dev_ndcg@10": base_ndcg,
        }

    def _train_config(
        self, candidate: str, out: Path, negatives: Path, with_dev: bool, max_steps: int | None = None
    ) -> Any:
        """The bi-encoder's TrainConfig for distillation `candidate` (dev evaluation during training when
        `with_dev`; `max_steps` overrides the setting)."""
        from densekit.retriever.train.config import DataConfig, LossConfig, TrainConfig

        cfg = self.config
        return TrainConfig(
            model=cfg.model,  # type: ignore[arg-type]
            output=out,
            data=DataConfig(
                negatives=negatives,
                corpus=str(self.data_dir),
                negatives_per_query=cfg.negatives_per_query,
                positives=cfg.positives,
            ),
            loss=LossConfig(
                name=cfg.loss,
                temperature=cfg.temperature,
                guide=cfg.guide,
                distill=candidate,
                distill_weight=cfg.distill_weight,
                distill_temperature=cfg.distill_temperature,
                teacher_score="ce_score" if candidate != "none" else None,
                matryoshka_dims=cfg.matryoshka_dims,
            ),
            epochs=cfg.epochs,
            max_steps=max_steps if max_steps is not None else cfg.max_steps,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            seed=cfg.seed,
            max_length=cfg.max_length,
            eval_data=str(self.data_dir) if with_dev else None,
            eval_split="dev",
            eval_steps=cfg.eval_steps if with_dev else 0,
            save_steps=cfg.save_steps,
            device=cfg.device,
            precision=cfg.precision,
            remine_every=cfg.remine_every,
        )

    def _train(self, folder: Path, resume: bool) -> dict:
        from densekit.retriever.train import train

        cfg = self.config
        runs: dict[str, dict] = {}
        candidates = cfg.candidates() if self.outputs["score"]["teacher"]["teaches"] else ["none"]
        for candidate in candidates:
            out = folder / candidate
            summary_file = out / "summary.json"
            if summary_file.is_file() and read_json(summary_file).get("finished"):
                summary = read_json(summary_file)  # this candidate finished before an interruption
            else:
                config = self._train_config(candidate, out, self.path("score", "negatives"), with_dev=True)
                summary = train(config, resume=out.exists())
            runs[candidate] = {
                "model": self._rel(out / "best"),
                "best": summary["best"],
                "steps": summary["steps"],
                "metrics_log": self._rel(out / "metrics.jsonl"),
            }
        chosen = max(runs, key=lambda c: (runs[c]["best"] or {}).get("ndcg@10", float("-inf")))
        if len(runs) > 1:
            scores = ", ".join(f"{c} {(r['best'] or {}).get('ndcg@10', float('nan')):.4f}" for c, r in runs.items())
            announce(f"dev ndcg@10 per distillation candidate: {scores}; keeping {chosen}")
        return {"chosen": chosen, "model": runs[chosen]["model"], "runs": runs}

    def refit_steps(self) -> int | None:
        """The refit's step limit: none when dev chose the last step (the whole schedule again, on more
        queries); else the chosen step scaled by (training + dev queries) / training queries."""
        chosen = self.outputs["train"]["runs"][self.outputs["train"]["chosen"]]
        best = (chosen["best"] or {}).get("step")
        if best is None or best >= chosen["steps"]:
            return self.config.max_steps
        split = self.outputs["split"]
        return max(1, round(best * (split["train_queries"] + split["dev_queries"]) / split["train_queries"]))

    def _refit(self, folder: Path, resume: bool) -> dict:
        from densekit.data import resolve_dataset
        from densekit.mining.config import mine
        from densekit.mining.miner import checkpoint_path
        from densekit.retriever.train import train

        cfg = self.config
        teaches = self.outputs["score"]["teacher"]["teaches"]
        scorer = str(self.path("reranker", "model")) if teaches else None
        negatives = folder / "negatives.jsonl"
        source = resolve_dataset(cfg.data)  # type: ignore[arg-type]
        mining = self._mining(scorer)
        result, _ = mine(mining, source, cfg.train_split, negatives, resume=checkpoint_path(negatives).is_file())
        candidate, run, steps = self.outputs["train"]["chosen"], folder / "run", self.refit_steps()
        announce(f"refit: {candidate} on every training query ({result.stats.to_json().get('queries')}), "
                 f"{'the whole schedule' if steps is None else f'{steps} steps'}")  # fmt: skip
        config = self._train_config(candidate, run, negatives, with_dev=False, max_steps=steps)
        summary = train(config, resume=resume and run.exists())
        return {
            "model": self._rel(run / "model"),
            "negatives": self._rel(negatives),
            "candidate": candidate,
            "max_steps": steps,
            "steps": summary["steps"],
            "queries": result.stats.to_json().get("queries"),
        }

    def _eval(self, folder: Path, resume: bool) -> dict:
        from densekit.finetune.report import evaluate_models

        cfg = self.config
        refit = self.path("refit", "model") if "refit" in self.outputs else None
        cross_encoder = self.path("reranker", "model") if cfg.cross_encoder else None
        results, blend = evaluate_models(
            base=cfg.model,  # type: ignore[arg-type]
            tuned=str(self.path("train", "model")),
            refit=None if refit is None else str(refit),
            cross_encoder=None if cross_encoder is None else str(cross_encoder),
            dev=(self.data_dir, "dev"),
            test=None if cfg.test_split == "none" else (cfg.data, cfg.test_split),  # type: ignore[arg-type]
            rerank_depth=cfg.rerank_depth,
            device=cfg.device,
            batch_size=cfg.encode_batch_size,
            runs_dir=folder / "runs",
        )
        write_json(folder / "results.json", results)
        delivered = refit or self.path("train", "model")
        copies = [("model", delivered)]
        if cross_encoder is not None:
            copies.append(("cross-encoder", cross_encoder))
        elif (self.output / "cross-encoder").is_dir():
            shutil.rmtree(self.output / "cross-encoder")  # an earlier run's; this report has no cross-encoder
        for name, source in copies:
            with atomic_dir(self.output / name, kind="model") as staging:
                shutil.copytree(source, staging, dirs_exist_ok=True)
        with (
            open(self.path("refit" if refit else "score", "negatives"), "rb") as src,
            atomic_file(self.output / "negatives.jsonl", "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
        runs = {
            split: {label: self._rel(folder / "runs" / f"{split}-{label}.trec") for label in r}
            for split, r in results.items()
        }
        return {"results": self._rel(folder / "results.json"), "metrics": results, "runs": runs, "blend": blend}


def finetune(config: FinetuneConfig, until: str | None = None) -> dict:
    """`densekit finetune`: run :class:`Pipeline`; returns its summary (stages, report paths, metrics)."""
    return Pipeline(config, until).run()
