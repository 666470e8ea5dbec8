"""Evaluation: pytrec_eval metrics (aggregate and per query), the BEIR harness, reports."""

from densekit.eval.metrics import EvalResult, evaluate, parse_metric

__all__ = ["EvalResult", "evaluate", "parse_metric"]
