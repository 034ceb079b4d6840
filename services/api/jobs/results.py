"""A job's results read from its manifest part by part: a page reads only the parts it spans (found from the
parquet footers), and the NDJSON stream holds one part in memory at a time, so a job of a million clips is
never built in memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dataengine.shards import MANIFEST_SCHEMA, iter_manifest_parts, manifest_part_rows
from services.api.jobs.schemas import ResultRow

COLUMNS = [name for name in ResultRow.model_fields if name in MANIFEST_SCHEMA.names]


def result_page(out: Path, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """(rows in the job's manifest, rows ``offset`` to ``offset + limit`` of them) in part-name order."""
    if not (out / "manifest").is_dir():
        return 0, []
    counts = manifest_part_rows(out)
    total = sum(rows for _, rows in counts)
    spans, start = {}, 0
    for part, rows in counts:
        if start + rows > offset and start < offset + limit:
            spans[part] = start
        start += rows
    items: list[dict[str, Any]] = []
    for part, table in iter_manifest_parts(out, COLUMNS, parts=list(spans)):
        first = max(0, offset - spans[part])
        items += table.slice(first, limit - len(items)).to_pylist()
    return total, items


def result_lines(out: Path) -> Iterator[bytes]:
    """Every row of the job's manifest as one JSON line, part by part."""
    if not (out / "manifest").is_dir():
        return
    for _, table in iter_manifest_parts(out, COLUMNS):
        for batch in table.to_batches(max_chunksize=1000):
            lines = (ResultRow.model_validate(row).model_dump_json() + "\n" for row in batch.to_pylist())
            yield "".join(lines).encode()
