"""What a run did: counts, bad rows by reason, time per stage, rates; rendered on one screen."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.catalog import BadRow


@dataclass
class RunReport:
    command: str
    status: str = "running"  # ok | unchanged | dry-run | failed
    version: str | None = None
    parent_version: str | None = None
    rows_read: int = 0
    skus: int = 0
    images: int = 0
    embedded: int = 0
    reused: int = 0
    copied_skus: int = 0
    deleted_skus: int = 0
    feedback_rows: int = 0
    write_method: str = ""
    bad: list[BadRow] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    recall: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def failures_by_reason(self) -> dict[str, int]:
        return dict(Counter(b.reason for b in self.bad).most_common())

    def bad_fraction(self) -> float:
        return len(self.bad) / self.rows_read if self.rows_read else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command, "status": self.status, "version": self.version,
            "parent_version": self.parent_version, "rows_read": self.rows_read,
            "skus": self.skus, "images": self.images, "embedded": self.embedded,
            "reused": self.reused, "copied_skus": self.copied_skus,
            "deleted_skus": self.deleted_skus, "feedback_rows": self.feedback_rows,
            "write_method": self.write_method,
            "bad_rows": len(self.bad), "failures_by_reason": self.failures_by_reason(),
            "stages_s": {k: round(v, 3) for k, v in self.stages.items()},
            "elapsed_s": round(self.elapsed, 3), "recall_at_10": self.recall,
            "notes": self.notes,
        }

    def write(self, path: Path) -> None:
        """The summary plus every bad row, as JSON."""
        data = self.to_json() | {"bad": [b.to_json() for b in self.bad]}
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False))

    def render(self, max_bad: int = 10) -> str:
        t = self.elapsed
        emb_t = self.stages.get("embed", 0.0)
        lines = [
            f"sku-index {self.command}: {self.status}"
            + (f"  version {self.version}" if self.version else "")
            + (f" (on top of {self.parent_version})" if self.parent_version else ""),
            f"  rows read {self.rows_read:,}   bad {len(self.bad):,} "
            f"({100 * self.bad_fraction():.1f}%)   SKUs {self.skus:,}   images {self.images:,}",
        ]
        if self.embedded or self.reused:
            rate = f"   {self.embedded / emb_t:,.1f} images/s" if emb_t > 0 else ""
            lines.append(f"  embedded {self.embedded:,}   reused {self.reused:,}{rate}")
        if self.copied_skus or self.deleted_skus:
            lines.append(f"  SKUs copied unchanged {self.copied_skus:,}   deleted "
                         f"{self.deleted_skus:,}")
        if "redis" in self.stages and self.skus:
            lines.append(f"  redis ({self.write_method}) {self.skus / self.stages['redis']:,.0f} "
                         "SKUs/s")
        if self.recall:
            lines.append("  recall@10 vs exact: " + "  ".join(
                f"{k} {v:.3f}" for k, v in self.recall.items()))
        stages = "  ".join(f"{k} {v:.2f}s" for k, v in self.stages.items())
        lines.append(f"  stages: {stages}   total {t:.2f}s")
        if self.status == "ok" and t > 0:
            lines.append(f"  throughput: {self.skus / t:,.0f} SKUs/s, {self.images / t:,.0f} "
                         "images/s end to end")
        if self.bad:
            lines.append("  failures by reason: " + ", ".join(
                f"{k} {v}" for k, v in self.failures_by_reason().items()))
            lines += [f"    {b}" for b in self.bad[:max_bad]]
            if len(self.bad) > max_bad:
                lines.append(f"    ... {len(self.bad) - max_bad} more (see the report file)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"
