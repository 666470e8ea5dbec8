"""Everything the CLI prints: JSON, rich tables, plain lines and Markdown, done once.

Data shown through rich is escaped (`rich.markup.escape`): a title such as SciFact's "Lp[a]" or the
hint "pip install 'densekit[lucene]'" would otherwise be read as markup and lose its brackets.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def setup(as_json: bool, quiet: bool) -> None:
    """Silence progress bars for --json/--quiet and quiet the libraries' own logging (transformers, Java).

    Does not import transformers: a command that fails on its options must fail before any model
    library loads. The environment variables reach transformers and the JVM when they load later.
    """
    from densekit.progress import set_quiet

    set_quiet(as_json or quiet)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if as_json or quiet:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:  # already loaded (in-process callers): set it directly
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def emit(obj: dict[str, Any]) -> None:
    """The one JSON object a `--json` command prints on stdout."""
    print(json.dumps(obj, indent=2, default=str))


def say(text: str) -> None:
    """One line of plain output (escaped: brackets in data stay)."""
    console.print(escape(text))


def markdown(text: str) -> None:
    """Markdown output (`--format markdown`), printed as is."""
    print(text)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[str] = ()) -> None:
    """Print a rich table; every title and cell is escaped. Columns named in `right` are right-aligned."""
    view = Table(title=escape(title))
    for column in columns:
        view.add_column(escape(column), justify="right" if column in right else "left")
    for row in rows:
        view.add_row(*(escape(str(cell)) for cell in row))
    console.print(view)


def metrics_table(title: str, metrics: dict[str, float]) -> None:
    """One row of metric values (4 decimals) under their names."""
    table(title, list(metrics), [[f"{v:.4f}" for v in metrics.values()]], right=list(metrics))


def key_values(rows: dict[str, Any], title: str | None = None, width: int = 100) -> None:
    """A two-column table of names and values (no raw dicts): a nested dict becomes `key.sub` rows, a list
    a comma-separated line, a long value is cut at `width` characters (the JSON output has it whole)."""

    def show(value: Any) -> str:
        text = ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        return text if len(text) <= width else text[: width - 3] + "..."

    view = Table(title=escape(title or ""), show_header=False)
    view.add_column(style="bold")
    view.add_column()
    for key, value in rows.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                if inner not in (None, ""):
                    view.add_row(escape(f"{key}.{sub}"), escape(show(inner)))
        elif value is not None:
            view.add_row(escape(key), escape(show(value)))
    console.print(view)


def rich(renderable: Any) -> None:
    """A rich object the library built (e.g. mining statistics' table)."""
    console.print(renderable)
