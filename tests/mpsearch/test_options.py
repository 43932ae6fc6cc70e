"""`VerbOptions.of`: an options object, keywords, or both; unknown keywords and wrong objects refused."""

from dataclasses import dataclass

import pytest

from mpsearch.options import VerbOptions


@dataclass
class FrobnicateOptions(VerbOptions):
    steps: int = 8
    seed: int = 0
    prompts: tuple[str, ...] = ()


def test_keywords_replace_fields_of_the_object_or_the_defaults():
    assert FrobnicateOptions.of() == FrobnicateOptions()
    assert FrobnicateOptions.of(steps=2) == FrobnicateOptions(steps=2)
    base = FrobnicateOptions(steps=2, seed=5)
    assert FrobnicateOptions.of(base, seed=1) == FrobnicateOptions(steps=2, seed=1)
    assert base.seed == 5  # the caller's object is not changed
    assert FrobnicateOptions.of(base) is not base and FrobnicateOptions.of(base) == base


def test_unknown_keywords_and_wrong_objects_are_type_errors_naming_them():
    with pytest.raises(TypeError) as e:
        FrobnicateOptions.of(step=2, colour="red")
    assert str(e.value) == ("frobnicate() got unexpected keyword arguments 'step' (did you mean 'steps'?), 'colour'; "
                            "its options are the fields of FrobnicateOptions")
    with pytest.raises(TypeError, match=r"^frobnicate\(\): options must be of type FrobnicateOptions, got dict$"):
        FrobnicateOptions.of({"steps": 2})
