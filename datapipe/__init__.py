"""The data pipeline for SFT and preference stages: read -> normalise -> clean -> dedup -> mix -> tokenise -> pack.

Every step returns ``(rows, report)`` so the run can say how many rows each step kept and why it dropped
the rest. Unusable rows raise or are reported as :class:`RowError` naming the file, the row and the reason.
"""
from datapipe.rows import Row, RowError  # noqa: F401
from datapipe.clean import clean_rows  # noqa: F401,E402
from datapipe.dedup import dedup_exact, dedup_near  # noqa: F401,E402
from datapipe.formats import normalize_row, normalize_rows  # noqa: F401,E402
from datapipe.io import read_rows  # noqa: F401,E402
from datapipe.mix import mix_sources  # noqa: F401,E402
