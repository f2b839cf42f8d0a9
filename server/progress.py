"""The one-line progress report of a round, read from its :class:`RoundRecord`."""

from __future__ import annotations

from shared.records import RoundRecord


def progress_line(record: RoundRecord, total_rounds: int) -> str:
    parts = [f"[confide] round {record.round}/{total_rounds}"]
    if record.stopped is not None:
        parts.append(f"STOPPED ({record.stopped})")
    elif record.skipped is not None:
        parts.append(f"SKIPPED ({record.skipped})")
    parts.append(f"clients {record.fit_replies or 0}/{record.fit_sampled or 0}")
    if record.fit_rejected:
        parts.append(f"rejected {record.fit_rejected}")
    if record.train_loss is not None:
        parts.append(f"loss {record.train_loss:.4f}")
    if record.hr10 is not None:
        parts.append(
            f"HR@10 {record.hr10:.4f} NDCG@10 {record.ndcg10:.4f} "
            f"(full {record.full_hr10:.4f}/{record.full_ndcg10:.4f})"
        )
    parts.append(f"{record.round_seconds:.1f}s")
    return " | ".join(parts)
