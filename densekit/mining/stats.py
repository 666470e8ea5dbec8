"""Mining statistics: what the sources proposed, what each filter removed, what was written.

Counts are additive over queries, so a resumed run restores them from its checkpoint and continues.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from rich.table import Table


@dataclass
class MiningStats:
    """Counters of one mining run (see :meth:`table` for their meaning)."""

    negatives_per_query: int = 0
    queries: int = 0
    queries_mined: int = 0
    queries_without_positives: int = 0
    positives_missing_from_corpus: int = 0
    candidates_seen: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    candidates_kept: int = 0
    negatives_written: int = 0
    queries_short: int = 0
    queries_without_negatives: int = 0
    sum_positive_score: float = 0.0
    positives_scored: int = 0
    sum_negative_score: float = 0.0
    seconds: float = 0.0

    def add_removed(self, removed: dict[str, int]) -> None:
        for label, count in removed.items():
            self.removed[label] = self.removed.get(label, 0) + count

    def to_json(self) -> dict:
        data = asdict(self)
        data["mean_positive_score"] = self.sum_positive_score / self.positives_scored if self.positives_scored else None
        data["mean_negative_score"] = (
            self.sum_negative_score / self.negatives_written if self.negatives_written else None
        )
        data["seconds"] = round(self.seconds, 3)
        return data

    @classmethod
    def from_json(cls, data: dict) -> MiningStats:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def table(self, title: str = "hard-negative mining") -> Table:
        """A two-column rich table: every counter, filters in the order they ran."""
        table = Table(title=title)
        table.add_column("")
        table.add_column("count", justify="right")
        table.add_column("share", justify="right")

        def share(part: int, whole: int) -> str:
            return f"{100.0 * part / whole:.1f}%" if whole else "-"

        table.add_row("queries judged", str(self.queries), "")
        skipped = self.queries_without_positives
        table.add_row("queries without a positive in the corpus (skipped)", str(skipped), share(skipped, self.queries))
        table.add_row("queries written", str(self.queries_mined), share(self.queries_mined, self.queries))
        table.add_row("candidates seen", str(self.candidates_seen), "")
        for label, count in self.removed.items():
            table.add_row(f"  removed by {label}", str(count), share(count, self.candidates_seen))
        table.add_row(
            "candidates left after filters",
            str(self.candidates_kept),
            share(self.candidates_kept, self.candidates_seen),
        )
        table.add_row("negatives written", str(self.negatives_written), "")
        table.add_row(
            f"queries with fewer than {self.negatives_per_query} negatives",
            str(self.queries_short),
            share(self.queries_short, self.queries_mined),
        )
        table.add_row(
            "queries with no negative",
            str(self.queries_without_negatives),
            share(self.queries_without_negatives, self.queries_mined),
        )
        data = self.to_json()
        for key in ("mean_positive_score", "mean_negative_score"):
            if data[key] is not None:
                table.add_row(key.replace("_", " ") + " (teacher)", f"{data[key]:.4f}", "")
        return table
