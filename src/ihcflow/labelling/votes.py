"""Several annotators per image: the majority label, ties, and agreement as kappa.

- Majority vote: the label with the most votes wins; a tie between the top labels decides
  nothing (the image is left out and listed). A winner that not everyone chose is a
  disagreement: accepted, and listed.
- Cohen's kappa for each pair of annotators, over the images both labelled.
- Fleiss' kappa over the images with two or more votes; images may have different numbers of
  votes (the usual generalisation: each image's agreement is averaged over its own pairs).
  Kappa is undefined (None) when chance agreement is 1, e.g. everyone always chose one class.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any


@dataclass(frozen=True)
class Vote:
    annotator: str
    label: str
    at: str  # when it was last changed (ISO 8601, as Label Studio says)


@dataclass(frozen=True)
class Decision:
    task_id: int
    votes: tuple[Vote, ...]

    @property
    def counts(self) -> Counter[str]:
        return Counter(v.label for v in self.votes)

    @property
    def label(self) -> str | None:
        """The majority label; None on a tie (or without votes)."""
        ranked = self.counts.most_common()
        if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
            return None
        return ranked[0][0]

    @property
    def agreement(self) -> float:
        """The share of votes for the most chosen label."""
        return max(self.counts.values()) / len(self.votes) if self.votes else 0.0

    @property
    def unanimous(self) -> bool:
        return len(self.counts) == 1

    def describe(self) -> str:
        return ", ".join(f"{label} {n}" for label, n in sorted(self.counts.items()))


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two annotators' labels for the same images."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} labels against {len(b)}: not the same images")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    chance = sum(ca[c] * cb[c] for c in ca) / (n * n)
    if chance >= 1.0:
        return None
    return (observed - chance) / (1.0 - chance)


def fleiss_kappa(items: Sequence[Mapping[str, int]]) -> float | None:
    """Fleiss' kappa of per-image vote counts ``{label: votes}`` (images with < 2 votes are
    left out)."""
    rated = [{k: v for k, v in item.items() if v} for item in items]
    rated = [item for item in rated if sum(item.values()) >= 2]
    if not rated:
        return None
    per_item = []
    totals: Counter[str] = Counter()
    for item in rated:
        n = sum(item.values())
        per_item.append((sum(v * v for v in item.values()) - n) / (n * (n - 1)))
        totals.update(item)
    observed = sum(per_item) / len(per_item)
    all_votes = sum(totals.values())
    chance = sum((v / all_votes) ** 2 for v in totals.values())
    if chance >= 1.0:
        return None
    return (observed - chance) / (1.0 - chance)


def agreement(decisions: Sequence[Decision]) -> dict[str, Any]:
    """Fleiss' kappa over all images with 2+ votes, Cohen's kappa per pair of annotators."""
    multi = [d for d in decisions if len(d.votes) >= 2]
    by_annotator: dict[str, dict[int, str]] = {}
    for d in decisions:
        for v in d.votes:
            by_annotator.setdefault(v.annotator, {})[d.task_id] = v.label
    pairs = []
    for a, b in combinations(sorted(by_annotator), 2):
        shared = sorted(set(by_annotator[a]) & set(by_annotator[b]))
        if shared:
            kappa = cohen_kappa(
                [by_annotator[a][t] for t in shared], [by_annotator[b][t] for t in shared]
            )
            pairs.append({"annotators": [a, b], "images": len(shared), "kappa": _round(kappa)})
    return {
        "annotators": sorted(by_annotator),
        "images_with_2_or_more_votes": len(multi),
        "fleiss_kappa": _round(fleiss_kappa([d.counts for d in multi])),
        "cohen_kappa": pairs,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
