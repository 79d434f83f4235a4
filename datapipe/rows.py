"""A row that remembers where it came from, and the error that names it.

Rows are plain dicts to everyone who uses them; the origin rides along as attributes so that an error
found three steps later still says which file and which row to fix.
"""
from __future__ import annotations


class Row(dict):
    """A dict with ``source`` (file or dataset name) and ``index`` (0-based position in that source)."""

    def __init__(self, data=(), source: str = "<memory>", index: int = -1, line: int | None = None):
        super().__init__(data)
        self.source = source
        self.index = index
        self.line = line  # 1-based line number for line-oriented files (what an editor shows)

    @property
    def origin(self) -> str:
        if self.line is not None:
            return f"{self.source} line {self.line}"
        return f"{self.source} row {self.index}"

    def derive(self, data) -> "Row":
        """A new row with ``data`` and this row's origin."""
        return Row(data, self.source, self.index, self.line)

    def __reduce__(self):  # keep the origin through pickling (Ray, multiprocessing)
        return (Row, (dict(self), self.source, self.index, self.line))


def origin_of(row) -> str:
    return row.origin if isinstance(row, Row) else "<row>"


class RowError(ValueError):
    """A dataset row cannot be used; the message names the file, the row and why."""

    def __init__(self, origin: str, why: str):
        super().__init__(f"{origin}: {why}")
        self.origin = origin
        self.why = why
