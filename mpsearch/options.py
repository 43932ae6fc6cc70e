"""What the options objects of the public verbs share: built from an object, from keywords, or both.

`profile(pipe, ProfileOptions(steps=4))`, `profile(pipe, steps=4)` and
`profile(pipe, ProfileOptions(steps=4), seed=1)` all work: the keywords replace fields of the object. A
keyword that is no field is a `TypeError` naming it, as Python's own for a function.
"""

from __future__ import annotations

import difflib
from dataclasses import fields, replace
from typing import Any, TypeVar

T = TypeVar("T", bound="VerbOptions")


class VerbOptions:
    """Mixin of a verb's options dataclass (`ProfileOptions` for `profile`, …): the verb is the class name
    without `Options`, lower-cased, and names the function in errors."""

    @classmethod
    def of(cls: type[T], options: T | None = None, **kwargs: Any) -> T:
        """`options` (default: every field at its default) with `kwargs` replacing its fields."""
        verb = cls.__name__.removesuffix("Options").lower()
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"{verb}(): options must be of type {cls.__name__}, got {type(options).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, names, 1))
                     else repr(k) for k in unknown]  # fmt: skip
            s = "s" if len(unknown) > 1 else ""
            raise TypeError(f"{verb}() got unexpected keyword argument{s} {', '.join(hints)}; "
                            f"its options are the fields of {cls.__name__}")  # fmt: skip
        return replace(options, **kwargs) if options is not None else cls(**kwargs)
