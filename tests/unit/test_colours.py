"""Recommended display colours: the contract's, else the anatomy's, else one by number."""

from appliance.domain.colours import display_colour
from appliance.domain.concepts import CodedConcept

LIVER = CodedConcept("SCT", "10200004", "Liver")
UNKNOWN = CodedConcept("99LOCAL", "gizmo", "Gizmo")


def test_declared_colour_wins_then_the_anatomy_then_the_number() -> None:
    assert display_colour((1, 2, 3), LIVER, 1) == (1, 2, 3)
    assert display_colour(None, LIVER, 1) == display_colour(None, LIVER, 7)
    assert display_colour(None, LIVER, 1) != display_colour(None, UNKNOWN, 1)
    numbered = {display_colour(None, UNKNOWN, number) for number in range(1, 13)}
    assert len(numbered) == 12, "a dozen unnamed structures, a dozen colours"
