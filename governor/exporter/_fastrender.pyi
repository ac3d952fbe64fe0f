# Types of the optional C accelerator of the exporter (governor/exporter/_fastrender.c).
from typing import Any, Final

KIND_ATTR: Final[int]
KIND_DICT: Final[int]
KIND_DICT_USEC: Final[int]
KIND_ITEM: Final[int]
KIND_PSI_SOME: Final[int]
KIND_PSI_FULL: Final[int]

def family(prefix: str, rows: list[tuple[str, Any]], kind: int, attr: str,
           key: str | None, /) -> str: ...
