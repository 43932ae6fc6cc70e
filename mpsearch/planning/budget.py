"""Budgets as users write them: `4GB`, `4GiB`, `500MB`, `4.5bits`, `30%`, `2.5Tbitops`, `25%bitops`.

A `Budget` is parsed once, echoed back exactly as understood (`str(budget)`), and resolved against an
inventory into one resource ceiling the solver enforces: `bytes` (denoiser bytes on disk), `wbits`
(Σ params × nominal weight bits, i.e. the size-weighted mean bits × total params) or `bitops`
(Σ MACs × w-bits × a-bits per denoiser call).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mpsearch.model import Inventory
from mpsearch.planning.cost import FLOAT_BITS, WeightFormat, fp16_bytes
from solvers.problem import InfeasibleBudget, Solution

_BYTE_UNITS = {
    "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}
_SI = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_NUM = r"(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?"

ACCEPTED = (
    "accepted budgets: bytes '4GB' (10^9) / '4GiB' (2^30) / '500MB' / '750MiB' / '123456B'; "
    "mean weight bits '4.5bits'; percent of the fp16 size '30%'; "
    "BitOPs per denoiser call '2.5Tbitops' / '800Gbitops' or percent of W16A16 BitOPs '25%bitops'"
)


# per budget kind: what it measures and an example, for messages
KIND_TEXT = {
    "bytes": ("a size in bytes", "4GB"),
    "percent": ("a percent of the fp16 size", "30%"),
    "bits": ("a mean weight bit-width", "4bits"),
    "bitops": ("BitOPs per denoiser call", "2Tbitops"),
    "bitops_percent": ("a percent of the W16A16 BitOPs", "25%bitops"),
}


class BudgetError(ValueError):
    """A budget text that cannot be read."""


def _number(mantissa: str, exponent: str | None) -> float:
    return float(f"{mantissa}e{exponent or 0}")  # inf when too large: refused by `_checked`


@dataclass(frozen=True)
class Budget:
    """`kind` ∈ {bytes, bits, percent, bitops, bitops_percent}; `value` in that kind's unit."""

    kind: str
    value: float
    text: str
    unit: str = ""

    @classmethod
    def parse(cls, text: str | Budget) -> Budget:
        if isinstance(text, Budget):
            return text
        s = str(text).strip().replace(" ", "").replace("_", "")
        if m := re.fullmatch(_NUM + r"%bitops", s, re.I):
            return cls._checked("bitops_percent", _number(*m.groups()), text)
        if m := re.fullmatch(_NUM + r"([KMGTP]?)bitops", s, re.I):
            return cls._checked("bitops", _number(*m.groups()[:2]) * _SI[m.group(3).upper()], text)
        if m := re.fullmatch(_NUM + r"%", s):
            return cls._checked("percent", _number(*m.groups()), text)
        if m := re.fullmatch(_NUM + r"(bits?|b/w)", s, re.I):
            return cls._checked("bits", _number(*m.groups()[:2]), text)
        if m := re.fullmatch(_NUM + r"([KMGT]i?B|B)", s, re.I):
            unit = m.group(3).upper()
            return cls._checked("bytes", _number(*m.groups()[:2]) * _BYTE_UNITS[unit], text, unit)
        raise BudgetError(f"cannot read budget {str(text)!r}; {ACCEPTED}")

    @classmethod
    def _checked(cls, kind: str, value: float, text, unit: str = "") -> Budget:
        if not math.isfinite(value):
            raise BudgetError(f"budget {str(text)!r} is too large to be a number")
        if value <= 0:
            raise BudgetError(f"budget {str(text)!r} must be positive")
        if kind == "percent" and value > 100:
            raise BudgetError(f"budget {str(text)!r}: a size budget above 100% of fp16 means no quantization")
        if kind == "bits" and value > FLOAT_BITS:  # below the smallest width: the solver names the smallest budget
            raise BudgetError(f"budget {str(text)!r}: mean weight bits cannot exceed {FLOAT_BITS}")
        return cls(kind, value, str(text).strip(), unit)

    @property
    def resource(self) -> str:
        return {"bytes": "bytes", "percent": "bytes", "bits": "wbits"}.get(self.kind, "bitops")

    def resolve(self, inv: Inventory, fmt: WeightFormat | str | None = None) -> float:
        """The ceiling in the resource's unit (bytes, Σ params·bits, or BitOPs) for this inventory."""
        if self.kind == "bytes":
            return float(int(self.value))
        if self.kind == "percent":
            return float(int(fp16_bytes(inv) * self.value / 100))
        if self.kind == "bits":
            return self.value * sum(layer.params for layer in inv.layers)
        if self.kind == "bitops":
            return self.value
        return inv.total_macs * FLOAT_BITS * FLOAT_BITS * self.value / 100

    def describe(self, inv: Inventory | None = None) -> str:
        """The budget as understood, e.g. `4GB = 4,000,000,000 bytes of denoiser weights`."""
        head = {
            "bytes": f"{self.text} = {int(self.value):,} bytes of denoiser weights",
            "percent": f"{self.text} = {self.value:g}% of the fp16 denoiser size",
            "bits": f"{self.text} = size-weighted mean of {self.value:g} weight bits",
            "bitops": f"{self.text} = {self.value:,.0f} BitOPs per denoiser call",
            "bitops_percent": f"{self.text} = {self.value:g}% of the W16A16 BitOPs per denoiser call",
        }[self.kind]
        if inv is not None and self.kind in ("percent", "bitops_percent"):
            unit = "bytes" if self.kind == "percent" else "BitOPs"
            head += f" ({self.resolve(inv):,.0f} {unit})"
        return head

    def __str__(self) -> str:
        return self.text

    def per_image(self, inv: Inventory, full_steps: int) -> float:
        """The BitOPs ceiling of one image: `X%bitops` of W16A16 over `full_steps` steps, or an absolute value."""
        if self.kind == "bitops":
            return self.value
        if self.kind == "bitops_percent":
            return inv.total_macs * FLOAT_BITS * FLOAT_BITS * full_steps * self.value / 100
        raise ValueError(f"{self} is not a BitOPs budget")


class BudgetInfeasible(InfeasibleBudget):
    """The budget cannot be met; the message names the smallest feasible budget in the budget's own units.
    It is a `solvers.InfeasibleBudget` (the solvers' error, in the planner's words)."""

    def __init__(self, message: str, smallest_feasible: float | None):
        ValueError.__init__(self, message)
        self.constraint, self.upper, self.resource = "budget", None, None
        self.smallest_feasible = smallest_feasible

    @classmethod
    def of(cls, solution: Solution, budget: Budget, inv: Inventory) -> BudgetInfeasible:
        """'budget X is infeasible; the smallest feasible is Y' for an infeasible solution."""
        smallest = solution.smallest_feasible
        if smallest is None:
            text = f"budget {budget} cannot be met together with the other constraints"
        elif budget.kind in ("bytes", "percent"):
            text = (f"budget {budget} is infeasible: the smallest plan needs {math.ceil(smallest):,} bytes "
                    f"(try --budget {math.ceil(smallest)}B)")
        elif budget.kind == "bits":
            mean = smallest / sum(layer.params for layer in inv.layers)
            text = f"budget {budget} is infeasible: the smallest feasible is {math.ceil(mean * 1000) / 1000:g}bits"
        else:
            text = f"budget {budget} is infeasible: the smallest feasible is {smallest:,.0f} BitOPs"
        return cls(text, smallest)
