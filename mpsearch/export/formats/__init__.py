"""Weight formats: one file each, registering its cost rule, storage and runtime (see `base.py`).

Adding a format is one new file here that calls `register_format(...)`, imported below; `--format NAME`,
the cost model (`mpsearch.planning.cost`), `mpsearch.export` and `mpsearch.load_quantized` then find it.
"""

from mpsearch.export.formats import gguf, packed, quanto, sdnq  # noqa: F401  (each registers its format)
from mpsearch.export.formats.base import (
    DEFAULT_FORMAT,
    FLOAT_BITS,
    FORMATS,
    NativeFormat,
    WeightFormat,
    Written,
    get_format,
    register_format,
)

__all__ = ["DEFAULT_FORMAT", "FLOAT_BITS", "FORMATS", "NativeFormat", "WeightFormat", "Written", "get_format",
           "register_format"]
