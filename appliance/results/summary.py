"""The plain-language summary at the top of a report: a fixed template, no free generation, so
the same findings always read the same way.

Typical adult organ volumes are mean +/- 2 SD of the published values collected in the
project's MODELS.md (liver 1281 +/- 219 mL, spleen 195 +/- 78 mL); organs without a cited
range are listed without one.
"""

from appliance.results.findings import CTFindings, UltrasoundFindings

# SNOMED CT code of the organ -> (low, high) typical adult volume in mL.
TYPICAL_ADULT_ML = {
    "10200004": (843.0, 1719.0),  # liver
    "78961009": (39.0, 351.0),  # spleen
}


def _provenance(findings: CTFindings | UltrasoundFindings) -> str:
    models = findings.identity.models
    text = "Automated analysis by " + ", ".join(f"{m.name} v{m.version}" for m in models)
    text += "; not reviewed by a person."
    if any(model.synthetic for model in models):
        text += " Reference models trained on synthetic phantoms: not for clinical use."
    return text


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
            typical = TYPICAL_ADULT_ML.get(segment.type.value)
            if typical:
                low, high = typical
                verdict = (
                    "within" if low <= measured.volume_ml <= high
                    else "below" if measured.volume_ml < low
                    else "above"
                )  # fmt: skip
                text += f" ({verdict} the typical adult range {low:.0f} to {high:.0f} mL)"
            volumes.append(text)
        else:
            separate.append((measured.longest_axial_diameter_mm, measured.volume_ml, segment))
    lines = [_provenance(findings)]
    if volumes or not findings.searches:
        lines.append("Volumes: " + ("; ".join(volumes) if volumes else "none found") + ".")
    for search in findings.searches:
        where = f" in the {search.site.meaning.lower()}" if search.site else ""
        found = [item for item in separate if item[2].stage == search.stage]
        line = f"{search.stage.capitalize()} findings{where}: "
        if not found:
            lines.append(line + "none.")
            continue
        diameter, volume, largest = max(found, key=lambda item: item[0])
        lines.append(
            f"{line}{len(found)}; the largest is {largest.label} "
            f"({largest.type.meaning.lower()}), {diameter:.0f} mm longest axial diameter, "
            f"{volume:.1f} mL."
        )
    return " ".join(lines)


def ultrasound_summary(findings: UltrasoundFindings, frames: int) -> str:
    name = findings.segment.label
    present = findings.present
    lines = [_provenance(findings)]
    if not present:
        lines.append(f"The {name} was not seen in any of the {frames} frames.")
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
    return " ".join(lines)
