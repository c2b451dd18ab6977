"""Recommended display colours of segments (PS3.3 C.8.20.2, encoded as CIELab in the SEG).

A label's contract may declare its colour; where it does not, the anatomy's conventional
colour is used (the 3D Slicer generic anatomy palette's hues, which radiologists know from
Slicer and OHIF), and anything else gets a distinct colour by its segment number rather than
the viewer's one default for all.
"""

from appliance.domain.concepts import CodedConcept

Rgb = tuple[int, int, int]

_BY_SNOMED_TYPE: dict[str, Rgb] = {
    "10200004": (221, 130, 101),  # liver
    "78961009": (157, 108, 162),  # spleen
    "64033007": (185, 102, 83),  # kidney
    "18639004": (185, 102, 83),  # left kidney
    "9846003": (185, 102, 83),  # right kidney
    "15825003": (224, 97, 76),  # aorta
    "64131007": (0, 151, 206),  # inferior vena cava
    "421060004": (241, 214, 145),  # vertebral column
    "51282000": (241, 214, 145),  # vertebra
    "14799000": (255, 240, 0),  # metastatic neoplasm
    "108369006": (255, 240, 0),  # neoplasm
    "52988006": (255, 240, 0),  # lesion
    "441457006": (64, 224, 208),  # cyst
}

# Distinct, saturated hues for structures the table does not name, by segment number.
_CYCLE: tuple[Rgb, ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
)


def display_colour(declared: Rgb | None, type: CodedConcept, number: int) -> Rgb:
    """The colour a viewer should draw segment `number` of anatomy `type` in."""
    if declared is not None:
        return declared
    if type.scheme in ("SCT", "SRT"):
        known = _BY_SNOMED_TYPE.get(type.value)
        if known is not None:
            return known
    return _CYCLE[(number - 1) % len(_CYCLE)]
