"""Coded concepts (PS3.3 Table 8.8-1, the Basic Code Sequence Macro): the one triplet of
scheme designator, code value and code meaning that model contracts, findings, the audit
vocabulary and the SEG and SR encoders share.
"""

from dataclasses import dataclass

SHORT_STRING = 16  # SH: Coding Scheme Designator
LONG_STRING = 64  # LO: Code Meaning; a Long Code Value (UC) holds more, 64 is our limit


@dataclass(frozen=True, slots=True)
class CodedConcept:
    scheme: str
    value: str
    meaning: str

    def __post_init__(self) -> None:
        for name, text, limit in (
            ("scheme", self.scheme, SHORT_STRING),
            ("value", self.value, LONG_STRING),
            ("meaning", self.meaning, LONG_STRING),
        ):
            if not 1 <= len(text) <= limit:
                raise ValueError(f"a code's {name} must be 1 to {limit} characters: {text!r}")
