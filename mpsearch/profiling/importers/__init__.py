"""Profiles from other tools' sensitivity logs: one module per format, registered by name (`base.py`).

    from mpsearch.profiling.importers import import_profile
    import_profile("mixdq", "MixDQ/", "profiles/sdxl-turbo-mixdq")    # MixDQ's published logs

A new format is one new file here with `@register_importer("name")`, imported below.
"""

from mpsearch.profiling.importers import mixdq  # noqa: F401  (importing registers the importer)
from mpsearch.profiling.importers.base import IMPORTERS, import_profile, register_importer

__all__ = ["IMPORTERS", "import_profile", "register_importer"]
