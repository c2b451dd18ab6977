"""SEG and SR results: valid by dicom3tools and dcmtk, referencing what they measure, the same
UIDs on a re-run, and refused at the gate when broken."""

import dataclasses
import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from appliance.app.pipelines import run_frames, without_review
from appliance.domain.colours import display_colour
from appliance.domain.concepts import CodedConcept
from appliance.domain.findings import SegmentationType
from appliance.inference.backend import OnnxRuntimeBackend
from appliance.inference.catalog import load_catalog
from appliance.phantoms.ct import Grid, generate_ct
from appliance.phantoms.dicom import write_us_cine
from appliance.phantoms.ultrasound import generate_cine
from appliance.results.encode import ct_results, ultrasound_results
from appliance.results.preview import ultrasound_preview
from appliance.results.segmentation import Equipment
from appliance.results.validate import InvalidResult, check
from tests.support.dcmqi import seg_labels, sr_json
from tests.support.services import missing_service
from tests.support.truth import truth_study

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
EQUIPMENT = Equipment("Appliance project", "DICOM inference appliance", "0.1.0", "test-1")
SEG_LABELMAP = "1.2.840.10008.5.1.4.1.1.66.7"


@pytest.fixture(scope="module")
def validators() -> None:
    for tool in ("dciodvfy", "dsrdump"):
        if shutil.which(tool) is None:
            missing_service(f"{tool} (dicom3tools, dcmtk) is not installed")


def dciodvfy_findings(path: Path) -> list[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [
        line
        for line in (run.stdout + run.stderr).splitlines()
        if line.startswith(("Error", "Warning"))
    ]


def written(tmp_path: Path, encoded: bytes, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(encoded)
    return path


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A phantom CT series with lesions, and findings from its own truth (the encoders are
    under test here, not the models)."""
    phantom = generate_ct(11, Grid((48, 96, 96), (4.0, 3.5, 3.5)), lesion_count=3)
    sources, findings = truth_study(phantom, tmp_path_factory.mktemp("ct"))
    return sources, findings


def test_ct_seg_and_sr_are_valid_and_reference_their_segments(
    validators: None,
    ct_case,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    sources, findings = ct_case
    seg_result, sr_result = ct_results(sources, findings, SegmentationType.BINARY, EQUIPMENT)
    seg_path = written(tmp_path, seg_result.encoded, "seg.dcm")
    sr_path = written(tmp_path, sr_result.encoded, "sr.dcm")
    assert dciodvfy_findings(seg_path) == []
    assert dciodvfy_findings(sr_path) == []
    dump = subprocess.run(["dsrdump", str(sr_path)], capture_output=True, text=True, check=True)
    assert "Imaging Measurement Report" in dump.stdout

    seg = hd.seg.segread(seg_path)
    lesions = [s for s in findings.segments if s.finding_site is not None]
    assert len(lesions) >= 2
    assert len(seg.SegmentSequence) == len(findings.segments)
    assert {str(item.TrackingUID) for item in seg.SegmentSequence} == {
        str(s.tracking_uid) for s in findings.segments
    }
    sr = hd.sr.srread(sr_path)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(findings.segments)
    for group in groups:
        reference = group.referenced_segment[0]  # the IMAGE item naming the SEG segment
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        segment = findings.segments[reference.referenced_segment_numbers[0] - 1]
        assert group.tracking_uid == segment.tracking_uid
        names = {measurement.name.meaning for measurement in group.get_measurements()}
        assert names == {"Volume"}
        assert group.get_measurements()[0].value == round(group.get_measurements()[0].value, 2)
    drawn = sr.content.get_planar_roi_measurement_groups()
    assert len(drawn) == len(findings.measurements), "each finding drawn on a slice"
    by_uid = {str(source.SOPInstanceUID): index for index, source in enumerate(sources)}
    by_tracking = {str(s.tracking_uid): s for s in findings.segments}
    stated = {m.segment: m for m in findings.measurements}
    for group in drawn:
        segment = by_tracking[str(group.tracking_uid)]  # the same finding as its volume
        region = group.roi
        assert region.graphic_type.value == "POLYLINE"
        slice_index = by_uid[region.ContentSequence[0].referenced_sop_instance_uid]
        points = np.asarray(region.value)  # (column, row) on the source image
        painted = findings.labels[slice_index] == segment.number
        if segment.finding_site is None:  # an organ: its outline where it is largest
            assert not group.get_measurements()
            assert np.array_equal(points[0], points[-1]), "closed"
            enclosed = 0.5 * abs(
                np.sum(points[:-1, 0] * points[1:, 1] - points[1:, 0] * points[:-1, 1])
            )
            per_slice = (findings.labels == segment.number).sum(axis=(1, 2))
            assert per_slice[slice_index] == per_slice.max()
            assert painted.sum() * 0.5 <= enclosed
            continue
        (length,) = group.get_measurements()
        assert length.name.meaning == "Long axis"
        assert float(length.value) == pytest.approx(
            stated[segment.number].longest_axial_diameter_mm, abs=0.05
        )
        assert slice_index == stated[segment.number].long_axis.slice_index
        spacing = [float(v) for v in sources[slice_index].PixelSpacing]  # row, column
        start, end = points
        on_screen = np.hypot((end[0] - start[0]) * spacing[1], (end[1] - start[1]) * spacing[0])
        assert on_screen == pytest.approx(float(length.value), abs=0.5 * min(spacing))
        middle = np.round((start + end) / 2 - 0.5).astype(int)
        near = painted[middle[1] - 1 : middle[1] + 2, middle[0] - 1 : middle[0] + 2]
        assert near.any(), "the line crosses its lesion"
    summary = [
        item
        for item in sr.content[0].ContentSequence
        if item.name.meaning == "Qualitative Evaluations"
    ]
    text = summary[0].ContentSequence[0].TextValue
    assert f"Lesion findings in the liver: {len(lesions)}; the largest is lesion 1" in text
    assert "Volumes: liver " in text
    assert "not for clinical use" in text


def test_a_type_modifier_and_a_colour_are_encoded_in_the_segment(
    validators: None,
    ct_case,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    sources, findings = ct_case
    left = CodedConcept("SCT", "7771000", "Left")
    first = dataclasses.replace(findings.segments[0], type_modifier=left, colour=(46, 138, 184))
    modified = dataclasses.replace(findings, segments=(first, *findings.segments[1:]))

    seg_result, _ = ct_results(sources, modified, SegmentationType.BINARY, EQUIPMENT)

    path = written(tmp_path, seg_result.encoded, "seg.dcm")
    assert dciodvfy_findings(path) == []
    items = [dcmread(path).SegmentSequence[n].SegmentedPropertyTypeCodeSequence[0] for n in (0, 1)]
    (modifier,) = items[0].SegmentedPropertyTypeModifierCodeSequence
    assert (modifier.CodingSchemeDesignator, modifier.CodeValue) == ("SCT", "7771000")
    assert "SegmentedPropertyTypeModifierCodeSequence" not in items[1]
    segments = dcmread(path).SegmentSequence
    lab = hd.color.CIELabColor.from_dicom_value(segments[0].RecommendedDisplayCIELabValue)
    assert lab.to_rgb() == pytest.approx((46, 138, 184), abs=1), "the colour survives encoding"
    spleen = hd.color.CIELabColor.from_dicom_value(segments[1].RecommendedDisplayCIELabValue)
    assert spleen.to_rgb() == pytest.approx(
        display_colour(None, findings.segments[1].type, 2), abs=1
    )
    assert all("RecommendedDisplayCIELabValue" in segment for segment in segments), (
        "every segment has a colour, declared or its anatomy's"
    )


def test_labelmap_seg_holds_the_label_map(ct_case, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The Debian dicom3tools (2022) predate the Label Map SEG IOD and cannot check it; the
    gate's strict read-back and a frame-for-frame comparison stand in."""
    sources, findings = ct_case
    seg_result, _ = ct_results(sources, findings, SegmentationType.LABELMAP, EQUIPMENT)
    assert seg_result.sop_class_uid == SEG_LABELMAP
    seg = hd.seg.segread(written(tmp_path, seg_result.encoded, "seg.dcm"))
    volume = seg.get_volume(combine_segments=True)
    stored = np.asarray(volume.array)
    assert stored.shape == findings.labels.shape
    assert np.array_equal(np.flip(stored, 0), findings.labels) or np.array_equal(
        stored, findings.labels
    )


def test_a_rerun_makes_the_same_uids_and_a_changed_object_new_ones(ct_case) -> None:  # type: ignore[no-untyped-def]
    sources, findings = ct_case
    first = ct_results(sources, findings, SegmentationType.BINARY, EQUIPMENT)
    again = ct_results(sources, findings, SegmentationType.BINARY, EQUIPMENT)
    assert [r.sop_instance_uid for r in first] == [r.sop_instance_uid for r in again]
    assert first[0].sop_instance_uid != first[1].sop_instance_uid
    labels = findings.labels.copy()
    labels[labels == 1] = 0  # a voxel more or less changes the objects
    labels.flat[np.flatnonzero(findings.labels == 1)[0]] = 1
    changed = [
        ct_results(sources, findings, SegmentationType.LABELMAP, EQUIPMENT),
        ct_results(
            sources,
            findings,
            SegmentationType.BINARY,
            dataclasses.replace(EQUIPMENT, device_serial_number="other"),
        ),
        ct_results(
            sources,
            dataclasses.replace(findings, labels=labels),
            SegmentationType.BINARY,
            EQUIPMENT,
        ),
    ]
    seen = {r.sop_instance_uid for r in first}
    for results in changed:
        uids = {r.sop_instance_uid for r in results}
        assert not uids & seen, "no changed object takes an earlier object's UID"
        seen |= uids
    seg, sr = (dcmread(BytesIO(r.encoded)) for r in changed[0])
    assert sr.CurrentRequestedProcedureEvidenceSequence  # the SR names the SEG of its own form
    assert seg.SOPInstanceUID in {
        str(item.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }


@pytest.mark.parametrize("cine", ["phantom", "examples_ybr_color.dcm"])
def test_ultrasound_seg_and_sr_are_valid(validators: None, cine: str, tmp_path: Path) -> None:
    if cine == "phantom":
        path = write_us_cine(generate_cine(300_002, frames=12), tmp_path / "cine.dcm")
    else:
        path = Path(get_testdata_file(cine, download=False) or "")
    catalog = load_catalog(REPOSITORY)
    run = run_frames(catalog.pipelines["us"], catalog, path, OnnxRuntimeBackend(REPOSITORY, 2))
    results = ultrasound_results(run.source, run.findings, EQUIPMENT, run.frames)
    expected = ["SEG", "SR", "US"] if run.findings.present else ["SR"]
    assert [r.modality for r in results] == expected
    inherited = dciodvfy_findings(path)  # a real file's own dubious values are copied as is
    for index, result in enumerate(results):
        saved = written(tmp_path, result.encoded, f"{index}.dcm")
        assert [line for line in dciodvfy_findings(saved) if line not in inherited] == []
        subprocess.run(["dsrdump", str(saved)], capture_output=True, check=result.modality == "SR")
    if run.findings.present:
        seg = dcmread(written(tmp_path, results[0].encoded, "seg.dcm"))
        referenced = [
            int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
            for item in seg.PerFrameFunctionalGroupsSequence
        ]
        assert referenced == [area.frame for area in run.findings.present]
        assert np.array_equal(
            seg.pixel_array.reshape(len(referenced), seg.Rows, seg.Columns).astype(bool),
            run.findings.masks[[frame - 1 for frame in referenced]],
        )
        report = sr_json(written(tmp_path, results[1].encoded, "sr.dcm"), tmp_path / "dcmqi")
        areas: dict[str, list[float]] = {}
        for item in report["Measurements"]:  # type: ignore[attr-defined]
            for measured in item.get("measurementItems", []):
                areas.setdefault(str(item["TrackingIdentifier"]), []).append(
                    float(measured["value"])
                )
        for area in run.findings.present:  # dcmqi reads each frame's area
            name = f"{run.findings.segment.tracking_id} frame {area.frame}"
            assert areas[name] == [round(area.area_mm2 or 0, 1)]
        sr = hd.sr.srread(written(tmp_path, results[1].encoded, "sr.dcm"))
        outlines = [g for g in sr.content.get_planar_roi_measurement_groups() if g.roi is not None]
        assert len(outlines) == len(run.findings.present), "an outline drawn on each frame"
        for group, area in zip(outlines, run.findings.present, strict=True):
            assert group.roi.ContentSequence[0].referenced_frame_numbers == [area.frame]
            points = np.asarray(group.roi.value)
            assert np.array_equal(points[0], points[-1]), "a closed polygon"
            enclosed = 0.5 * abs(
                np.sum(points[:-1, 0] * points[1:, 1] - points[1:, 0] * points[:-1, 1])
            )
            assert enclosed >= area.area_px * 0.5, "the outline holds most of the frame's mask"
        evaluations = next(
            item
            for item in dcmread(written(tmp_path, results[1].encoded, "sr.dcm")).ContentSequence
            if item.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"
        )
        said_absent = sorted(
            int(item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedFrameNumber)
            for item in evaluations.ContentSequence
            if item.ValueType == "CODE" and item.ConceptCodeSequence[0].CodeMeaning == "Absent"
        )
        assert said_absent == sorted(run.findings.absent), "absent, frame by frame"
        kinds: dict[str, set[str]] = {}  # value types of each finding's groups, merged
        for group in _measurement_groups(dcmread(BytesIO(results[1].encoded))):
            items = list(group.ContentSequence)
            (tracking,) = [
                str(item.UID)
                for item in items
                if item.ConceptNameCodeSequence[0].CodeValue == "112040"  # Tracking UID
            ]
            kinds.setdefault(tracking, set()).update(item.ValueType for item in items)
        # OHIF 3 merges a finding's groups and shows the report only if each draws something
        assert all("SCOORD" in found for found in kinds.values())
        section, pngs = ultrasound_preview("cine", run.frames, run.findings)
        assert len(pngs) == len(section.images) == min(6, len(run.findings.present))
        assert [row.quantity for row in section.rows] == ["Area"] * len(run.findings.present)
        for png in pngs:  # each key frame with its outline in the cyst's colour
            rgb = np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(int)
            assert (np.abs(rgb - run.findings.segment.colour).sum(axis=-1) == 0).any()
        shown = dcmread(written(tmp_path, results[2].encoded, "outlined.dcm"))
        assert shown.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7.4"  # MF true colour SC
        assert int(shown.NumberOfFrames) == len(run.frames)
        pixels = shown.pixel_array.astype(int)  # RGB, from pydicom
        tinted = np.abs(pixels[..., 0] - pixels[..., 1]) + np.abs(pixels[..., 1] - pixels[..., 2])
        present = {area.frame for area in run.findings.present}
        for frame in range(1, len(run.frames) + 1):
            coloured = int((tinted[frame - 1] > 60).sum())
            assert (coloured > 0) == (frame in present), f"frame {frame}: outline iff found"


def test_the_gate_refuses_broken_objects(ct_case) -> None:  # type: ignore[no-untyped-def]
    sources, findings = ct_case
    seg_result, sr_result = ct_results(sources, findings, SegmentationType.BINARY, EQUIPMENT)
    seg = dcmread(BytesIO(seg_result.encoded))
    seg.PixelData = seg.PixelData[: len(seg.PixelData) // 2]
    with pytest.raises(InvalidResult, match="pixel data"):
        check(seg, sources)
    sr: Dataset = dcmread(BytesIO(sr_result.encoded))
    sr.PatientID = "SOMEONE ELSE"
    with pytest.raises(InvalidResult, match="PatientID differs"):
        check(sr, sources)


def test_binary_frames_that_do_not_end_on_a_byte_pass_the_gate_intact(tmp_path: Path) -> None:
    """45 x 47 pixels a frame: each 1-bit frame starts inside a byte (DICOM packs them with no
    padding), which pydicom 3.0's frame iterator cannot cut; the gate decodes them itself."""
    phantom = generate_ct(12, Grid((20, 45, 47), (5.0, 7.0, 7.0)))
    sources, findings = truth_study(phantom, tmp_path / "ct")
    seg_result, _ = ct_results(sources, findings, SegmentationType.BINARY, EQUIPMENT)
    seg = dcmread(BytesIO(seg_result.encoded))
    assert (seg.Rows * seg.Columns) % 8 != 0
    assert seg.NumberOfFrames > 1
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    assert frames.any(), "the mask survives encoding"
    seg.PixelData = seg.PixelData[:-2]  # the last frame cut short by more than the padding
    with pytest.raises(InvalidResult, match="pixel data"):
        check(seg, sources)


def _measurement_groups(sr: Dataset) -> list[Dataset]:
    found = []
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements":
            found += [
                group
                for group in item.ContentSequence
                if group.ConceptNameCodeSequence[0].CodeMeaning == "Measurement Group"
            ]
    return found


def _groups(sr: Dataset) -> dict[str, list[tuple[str, str]]]:
    """Per measurement group of a TID 1500 SR, by tracking identifier: its items as (concept
    name, coded value meaning or text)."""
    found: dict[str, list[tuple[str, str]]] = {}

    def walk(items: list[Dataset]) -> None:
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            if name == "Measurement Group":
                contents = [
                    (
                        child.ConceptNameCodeSequence[0].CodeMeaning,
                        child.ConceptCodeSequence[0].CodeMeaning
                        if "ConceptCodeSequence" in child
                        else str(child.get("TextValue", "")),
                    )
                    for child in item.ContentSequence
                ]
                found[dict(contents)["Tracking Identifier"]] = contents
            elif "ContentSequence" in item:
                walk(list(item.ContentSequence))

    walk(list(sr.ContentSequence))
    return found


def _summary(sr: Dataset) -> str:
    evaluations = [i for i in sr.ContentSequence if "ContentSequence" in i]
    return next(
        str(child.TextValue)
        for item in evaluations
        for child in item.ContentSequence
        if child.ConceptNameCodeSequence[0].CodeMeaning == "Summary"
    )


def test_a_low_confidence_finding_is_marked_and_a_withheld_one_is_not_delivered(
    validators: None, ct_case, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    sources, findings = ct_case
    flagged = {s.tracking_id: s.review for s in findings.segments if s.review}
    # 48 slices of 4 mm cut the liver: its volume is of the part imaged.
    assert "liver" in flagged
    assert "kidney_left" not in flagged
    seg_result, sr_result = ct_results(sources, findings, SegmentationType.BINARY, EQUIPMENT)
    seg = dcmread(BytesIO(seg_result.encoded))
    labels = {str(item.SegmentLabel): item for item in seg.SegmentSequence}
    assert "liver (low confidence)" in labels
    assert "kidney left" in labels
    assert str(labels["liver (low confidence)"].SegmentDescription).startswith(
        "Low confidence, review: cut by the field of view"
    )
    assert "SegmentDescription" not in labels["kidney left"]
    sr = dcmread(BytesIO(sr_result.encoded))
    groups = _groups(sr)
    certainty = ("Certainty of Finding", "Uncertain (qualifier value)")
    assert certainty in groups["liver"]
    assert certainty not in groups["kidney_left"]
    assert "findings are of low confidence" in _summary(sr)
    for index, result in enumerate((seg_result, sr_result)):
        assert dciodvfy_findings(written(tmp_path, result.encoded, f"{index}.dcm")) == []

    held = without_review(findings)
    seg_result, sr_result = ct_results(sources, held, SegmentationType.BINARY, EQUIPMENT)
    seg = dcmread(BytesIO(seg_result.encoded))
    labels = {str(item.SegmentLabel) for item in seg.SegmentSequence}
    assert not any(label.endswith("(low confidence)") for label in labels)
    assert "liver" not in labels
    assert [int(item.SegmentNumber) for item in seg.SegmentSequence] == list(
        range(1, len(labels) + 1)
    )
    kept = {s.tracking_id for s in findings.segments} - set(flagged)
    sr = dcmread(BytesIO(sr_result.encoded))
    assert set(_groups(sr)) == kept
    assert "Withheld as low confidence: liver (cut by the field of view" in _summary(sr)
    for index, result in enumerate((seg_result, sr_result)):
        assert dciodvfy_findings(written(tmp_path, result.encoded, f"held{index}.dcm")) == []


@pytest.mark.parametrize("kind", list(SegmentationType))
def test_dcmqi_reads_the_ct_seg_and_sr_back(
    kind: SegmentationType, ct_case, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Slicer's and Kaapana's converter: every segment on its voxels, every measurement with
    its value."""
    sources, findings = ct_case
    seg_result, sr_result = ct_results(sources, findings, kind, EQUIPMENT)
    uids = [str(segment.tracking_uid) for segment in findings.segments]
    read = seg_labels(written(tmp_path, seg_result.encoded, "seg.dcm"), tmp_path / "seg", uids)
    assert np.array_equal(read, findings.labels)

    report = sr_json(written(tmp_path, sr_result.encoded, "sr.dcm"), tmp_path / "sr")
    stated = {
        (str(item["TrackingIdentifier"]), str(measured["quantity"]["CodeMeaning"])): float(
            measured["value"]
        )
        for item in report["Measurements"]  # type: ignore[attr-defined]
        for measured in item["measurementItems"]
    }
    expected = {}
    for measured in findings.measurements:
        name = findings.segments[measured.segment - 1].tracking_id
        expected[(name, "Volume")] = round(measured.volume_ml, 2)
        if measured.longest_axial_diameter_mm is not None:
            expected[(name, "Long axis")] = round(measured.longest_axial_diameter_mm, 1)
    assert stated == expected
