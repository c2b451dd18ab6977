"""The plain-language summary at the top of a report: a fixed template, no free generation, so
the same findings always read the same way. It says what it is first: which models made it and
what they were made for, that it is for review, and which findings are of low confidence (or
were withheld) and why; then what was found.
"""

from appliance.domain.findings import Search, Withheld
from appliance.results.findings import CTFindings, UltrasoundFindings

_NAMED_DOUBTS = 3  # more separate findings of low confidence are listed by name only


def _provenance(findings: CTFindings | UltrasoundFindings) -> str:
    """Which models, each group of them with the domain they were made for, and what the
    report is: for review, by nobody yet."""
    by_limits: dict[str, list[str]] = {}
    for model in findings.identity.models:
        by_limits.setdefault(model.limits, []).append(f"{model.name} v{model.version}")
    text = "Automated analysis by " + "; ".join(
        ", ".join(names) + (f" (made for {limits})" if limits else "")
        for limits, names in by_limits.items()
    )
    text += ", for review by a radiologist; not reviewed by a person."
    if any(model.synthetic for model in findings.identity.models):
        text += " Reference models trained on synthetic phantoms: not for clinical use."
    return text


def _misses(search: Search) -> str:
    """What a search's answer leaves open: how much its model declares it misses, or that it
    declares nothing (an imported model, unmeasured here), so that "none" never reads as
    "there are none"."""
    known = (
        f"The search {search.sensitivity.describe()}"
        if search.sensitivity is not None
        else "The search's model declares no sensitivity"
    )
    return f" {known}: what it does not report is not excluded."


def _reasons(reasons: tuple[str, ...]) -> str:
    return "; ".join(reasons)


def _withheld(withheld: tuple[Withheld, ...]) -> list[str]:
    if not withheld:
        return []
    held = ", ".join(f"{item.label} ({_reasons(item.reasons)})" for item in withheld)
    return [f"Withheld as low confidence: {held}."]


def ct_summary(findings: CTFindings) -> str:
    """Volumes of what was segmented whole, then per search for separate findings how many
    it found and the largest; a search that found nothing says so, and nothing is said of
    what no stage looked for."""
    segments = {segment.number: segment for segment in findings.segments}
    volumes, separate = [], []
    for measured in findings.measurements:
        segment = segments[measured.segment]
        if measured.longest_axial_diameter_mm is None:
            text = f"{segment.label} {measured.volume_ml:.0f} mL"
            if segment.review:
                text += f" (low confidence, review: {_reasons(segment.review)})"
            volumes.append(text)
        else:
            separate.append((measured.longest_axial_diameter_mm, measured.volume_ml, segment))
    doubtful = [segment for segment in findings.segments if segment.review]
    lines = [_provenance(findings)]
    if doubtful:
        lines.append(f"{len(doubtful)} of {len(findings.segments)} findings are of low confidence.")
    lines += _withheld(findings.withheld)
    if volumes or not findings.searches:
        lines.append("Volumes: " + ("; ".join(volumes) if volumes else "none found") + ".")
    for search in findings.searches:
        where = f" in the {search.site.meaning.lower()}" if search.site else ""
        found = [item for item in separate if item[2].stage == search.stage]
        line = f"{search.stage.capitalize()} findings{where}: "
        if not found:
            lines.append(line + "none." + _misses(search))
            continue
        plain = [item for item in found if not item[2].review]
        if plain:
            diameter, volume, largest = max(plain, key=lambda item: item[0])
            line += (
                f"{len(found)}; the largest is {largest.label} "
                f"({largest.type.meaning.lower()}), {diameter:.0f} mm longest axial diameter, "
                f"{volume:.1f} mL."
            )
        else:
            line += f"{len(found)}, every one of low confidence."
        lines.append(line + _misses(search))
        doubtful = [item for _, _, item in found if item.review]
        if len(doubtful) <= _NAMED_DOUBTS:
            lines += [
                f"{item.label.capitalize()} is of low confidence, review: {_reasons(item.review)}."
                for item in doubtful
            ]
        else:
            lines.append(
                f"Of low confidence, review ({len(doubtful)}, each finding says why): "
                + ", ".join(item.label for item in doubtful)
                + "."
            )
    return " ".join(lines)


def ultrasound_summary(findings: UltrasoundFindings, frames: int) -> str:
    name = findings.segment.label
    present = findings.present
    lines = [_provenance(findings)]
    if findings.segment.review:
        lines.append(f"Every frame is of low confidence: {_reasons(findings.segment.review)}.")
    lines += _withheld(findings.withheld)
    if not present:
        lines.append(f"The {name} was not found in any of the {frames} frames.")
    else:
        largest = max(present, key=lambda area: area.area_px)
        size = (
            f"{largest.area_mm2:.0f} mm2"
            if largest.area_mm2 is not None
            else f"{largest.area_px} pixels"
        )
        lines.append(
            f"The {name} is present in {len(present)} of {frames} frames; its largest "
            f"cross-section is {size}, in frame {largest.frame}."
        )
        doubtful = [area for area in present if area.review]
        if doubtful and not findings.segment.review:
            lines.append(
                f"Low confidence, review, in frames "
                f"{', '.join(str(area.frame) for area in doubtful)}: "
                f"{_reasons(tuple(dict.fromkeys(r for a in doubtful for r in a.review)))}."
            )
    if findings.absent:
        lines.append(f"The model is confident it is absent from {len(findings.absent)} frames.")
    return " ".join(lines)
