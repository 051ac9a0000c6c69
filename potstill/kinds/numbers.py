"""Reading numbers out of text: GSM8K's `#### 42`, "the answer is 42", `\\boxed{42}`, and one canonical
string per number. Shared by the math kind (labeling) and the scores (evaluation), which must read an
answer the same way; neither imports the other.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_NUMBER = r"[-−]?\s*\$?\s*(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+)?"
_HASHES = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*:?\s*(" + _NUMBER + ")", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANY_NUMBER = re.compile(_NUMBER)


def normalise_number(text: str) -> str | None:
    """Canonical string of a number: no `$`, thousands commas or trailing zeros; `72.0` -> `72`,
    `0.50` -> `0.5`, `1/2` -> `0.5`, `−3` -> `-3`. None when it is not a number."""
    s = text.replace("−", "-").replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            value = Fraction(Decimal(num)) / Fraction(Decimal(den))
        else:
            value = Fraction(Decimal(s))
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None
    if value.denominator == 1:
        return str(value.numerator)
    out = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return "0" if out == "-0" else out


def extract_answer(text: str) -> str | None:
    """The final answer of a solution, normalised; None when there is none.

    Order of trust: the first number after the first `####` (GSM8K's format, which the few-shot prompt
    teaches); else the last "answer is N" / "answer: N"; else the last `\\boxed{N}`. A bare last number
    is not accepted: in a truncated chain of thought it is an intermediate result, not an answer.
    """
    m = _HASHES.search(text)
    if m:
        num = _ANY_NUMBER.search(m.group(1))
        if num:
            return normalise_number(num.group(0))
    found = _ANSWER_IS.findall(text)
    if found:
        return normalise_number(found[-1])
    boxed = _BOXED.findall(text)
    if boxed:
        num = _ANY_NUMBER.search(boxed[-1])
        if num:
            return normalise_number(num.group(0))
    return None
