"""Reading the bench's markdown tables back, for the tests of its scenarios."""

from __future__ import annotations


def table(markdown: str) -> dict[str, str]:
    """figure → value, from every `| figure | value |` row (with several columns, the
    values joined by ` | `)."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith(("| figure", "|---")):
            name, value = line[2:-2].split(" | ", 1)
            rows[name] = value
    return rows


def numbers(value: str) -> list[float]:
    """`1.0 / 2.5 / 3.0 (…)` → [1.0, 2.5, 3.0]."""
    return [float(x) for x in value.split(" (")[0].split(" / ")]
