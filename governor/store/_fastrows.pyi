from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

def sample_rows(samples: Sequence[Any], ids: Mapping[tuple[str, str | None, int], int],
                node_id: int, attrs: tuple[str, ...], psi_keys: tuple[str, ...],
                io_fields: tuple[str, ...], cache: dict[datetime, str] | None,
                fresh: list[datetime] | None, limit: int, /
                ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]: ...

def flat_chunks(rows: Sequence[Sequence[Any]], k: int, /) -> list[tuple[Any, ...]]: ...
