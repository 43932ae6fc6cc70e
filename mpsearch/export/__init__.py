"""Export: a plan applied to a model, simulated or written as a checkpoint, and loaded back.

- `simulate.py`: `fake_quantize`, the plan's weights (and activations) in place, as the checkpoint holds them.
- `write.py`: `export`, the all-or-nothing checkpoint writer, bytes checked against the cost model.
- `load.py`: `load_quantized`, a checkpoint back as a working pipeline.
- `formats/<name>.py`: one weight format per file (cost rule, storage, runtime); add a format there.
- `atomic.py`, `packing.py`: staged writes renamed into place; dense bit packing.

The package is also the verb: importing it sets `mpsearch.export` to this module, shadowing the lazily
loaded function, so the module is callable and `mpsearch.export(plan, out, ...)` is `write.export`.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from mpsearch.export.write import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
