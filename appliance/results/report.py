"""TID 1500 Measurement Reports (Comprehensive 3D SR) from a run's findings, with highdicom.

Each finding has a group referencing its segment in the run's SEG (Referenced Segment for a
CT volume, Referenced Segmentation Frame for an ultrasound frame) and a group drawing it on a
source image (an Image Region SCOORD: a lesion's long axis, an organ's or a frame's outline),
both carrying the finding's tracking identifier and UID, so viewers such as OHIF merge them
and draw the finding with its values. The observer is the device: the appliance and the
models' names and versions, never a person. A finding of low confidence carries Certainty of
Finding (DCM 111012) = Uncertain (SCT 64957009) in its groups. The Qualitative Evaluations
container holds a plain-language summary made from a fixed template, and, per frame the model
is confident lacks the structure, that it is absent there.
"""

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from appliance.domain.findings import RunIdentity, Segment
from appliance.results.findings import CTFindings, UltrasoundFindings
from appliance.results.segmentation import Equipment, coded
from appliance.results.summary import ct_summary, ultrasound_summary

SR_SERIES_NUMBER = 9002
_MILLILITRE = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
_MILLIMETRE = hd.sr.CodedConcept("mm", "UCUM", "millimeter")
_SQUARE_MILLIMETRE = hd.sr.CodedConcept("mm2", "UCUM", "square millimeter")
_PIXELS = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")
# Decimals a measurement is stated to: finer than a voxel or pixel can support, coarse enough
# that a Decimal String carries no float noise (81.46, not 81.4600000000000).
_DECIMALS = {"ml": 2, "mm": 1, "mm2": 1}
_QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
_CT_PROCEDURE = hd.sr.CodedConcept("77477000", "SCT", "Computed Tomography")
_US_PROCEDURE = hd.sr.CodedConcept("16310003", "SCT", "Ultrasonography")


def stated(value: float, unit: str) -> float:
    """`value` to the decimals its UCUM `unit` is stated to."""
    return round(value, _DECIMALS[unit])


def _measurement(
    name: hd.sr.CodedConcept, value: float, unit: hd.sr.CodedConcept
) -> hd.sr.Measurement:
    """A measurement stated to its unit's decimals."""
    return hd.sr.Measurement(name=name, value=stated(value, unit.value), unit=unit)


def _observation_context(equipment: Equipment, software: str, uid: str) -> hd.sr.ObservationContext:
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=uid,
                name=f"{equipment.model_name} {equipment.software_version}",
                manufacturer_name=equipment.manufacturer,
                model_name=software,
                serial_number=equipment.device_serial_number,
            ),
        )
    )


def _tracking(segment: Segment) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=segment.tracking_uid, identifier=segment.tracking_id)


def _frame_tracking(
    identity: RunIdentity, segment: Segment, frame: int
) -> hd.sr.TrackingIdentifier:
    """The structure in one frame, a finding of its own, in every group that speaks of it."""
    return hd.sr.TrackingIdentifier(
        uid=identity.uid("frame", str(frame)), identifier=f"{segment.tracking_id} frame {frame}"
    )


def _frame_absent(segment: Segment, source: Dataset, frame: int) -> hd.sr.CodeContentItem:
    """The structure is absent (SCT 272519000) from one source frame, which it references."""
    item = hd.sr.CodeContentItem(
        name=coded(segment.type),
        value=codes.SCT.Absent,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    item.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.ImageContentItem(
                name=codes.DCM.SourceOfMeasurement,
                referenced_sop_class_uid=UID(source.SOPClassUID),
                referenced_sop_instance_uid=UID(source.SOPInstanceUID),
                referenced_frame_numbers=[frame],
                relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
            )
        ]
    )
    return item


def _finding_sites(segment: Segment) -> list[hd.sr.FindingSite] | None:
    return [hd.sr.FindingSite(coded(segment.finding_site))] if segment.finding_site else None


def _certainty(review: tuple[str, ...]) -> list[hd.sr.QualitativeEvaluation] | None:
    """Uncertain, for a finding the appliance cannot stand behind; nothing for the rest."""
    if not review:
        return None
    return [hd.sr.QualitativeEvaluation(codes.DCM.CertaintyOfFinding, codes.SCT.Uncertain)]


def _frame_reference_only(
    group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """highdicom 0.28 writes Referenced Segment Number beside Referenced Frame Number in a
    Referenced Segmentation Frame item; the Image Reference macro (PS3.3 C.18.3.1) forbids
    the pair, since a SEG frame already belongs to one segment. Drop the segment number."""
    for item in group[0].ContentSequence:
        for reference in item.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in reference and "ReferencedSegmentNumber" in reference:
                del reference.ReferencedSegmentNumber
    return group


def _with_summary(
    report: hd.sr.MeasurementReport, text: str, stated: Sequence[hd.sr.CodeContentItem] = ()
) -> hd.sr.MeasurementReport:
    """The report with its Qualitative Evaluations: the summary, then what is `stated` of
    the study as a whole or of frames without a finding."""
    evaluations = hd.sr.ContainerContentItem(
        name=_QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    evaluations.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.DCM.Summary,
                value=text,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            ),
            *stated,
        ]
    )
    report[0].ContentSequence.append(evaluations)
    return report


def _document(
    evidence: Sequence[Dataset],
    report: hd.sr.MeasurementReport,
    uid: object,
    series_uid: object,
    equipment: Equipment,
    description: str,
) -> hd.sr.Comprehensive3DSR:
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_number=SR_SERIES_NUMBER,
        series_instance_uid=str(series_uid),
        sop_instance_uid=str(uid),
        instance_number=1,
        manufacturer=equipment.manufacturer,
        series_description=description,
        is_complete=True,
        is_final=False,  # VERIFIED needs a person: a device's report stays unverified
    )


def ct_report(
    sources: Sequence[Dataset],
    seg: Dataset,
    findings: CTFindings,
    equipment: Equipment,
    description: str,
) -> hd.sr.Comprehensive3DSR:
    """Per finding a volume group referencing its segment of `seg`, with finding site; and a
    planar group of the same finding (its tracking UID) drawn on a source slice (TID 1410
    with an Image Region SCOORD): a lesion's longest axial diameter as a length with its
    line, an organ's outline where its cross-section is largest. Viewers such as OHIF merge
    a finding's groups by tracking UID and draw it; OHIF 3 cannot show a group that draws
    nothing."""
    identity = findings.identity
    segments = {segment.number: segment for segment in findings.segments}
    source_series = hd.sr.SourceSeriesForSegmentation(str(sources[0].SeriesInstanceUID))
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = []
    for measured in findings.measurements:
        segment = segments[measured.segment]
        algorithm = hd.sr.AlgorithmIdentification(
            segment.algorithm.name, str(segment.algorithm.version)
        )
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(segment),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=UID(seg.SOPClassUID),
                    sop_instance_uid=UID(seg.SOPInstanceUID),
                    segment_number=segment.number,
                    source_series=source_series,
                ),
                finding_type=coded(segment.type),
                finding_sites=_finding_sites(segment),
                measurements=[_measurement(codes.SCT.Volume, measured.volume_ml, _MILLILITRE)],
                qualitative_evaluations=_certainty(segment.review),
                algorithm_id=algorithm,
            )
        )
        diameter = measured.longest_axial_diameter_mm
        drawn = measured.long_axis if diameter is not None else measured.outline
        if drawn is None:
            continue
        source = sources[drawn.slice_index]
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(segment),  # the same finding as its volume's
                referenced_region=hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,  # closed for an outline
                    graphic_data=np.array(drawn.points, dtype=np.float64),
                    source_image=hd.sr.SourceImageForRegion(
                        UID(source.SOPClassUID), UID(source.SOPInstanceUID)
                    ),
                ),
                finding_type=coded(segment.type),
                finding_sites=_finding_sites(segment),
                measurements=(
                    [_measurement(codes.SCT.LongAxis, diameter, _MILLIMETRE)]
                    if diameter is not None
                    else None
                ),
                qualitative_evaluations=_certainty(segment.review),
                algorithm_id=algorithm,
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(
            equipment, identity.software_version, identity.uid("device")
        ),
        procedure_reported=_CT_PROCEDURE,
        imaging_measurements=groups,
    )
    return _document(
        [*sources, seg],
        _with_summary(report, ct_summary(findings)),
        identity.object_uid("sr", "instance"),
        identity.object_uid("sr", "series"),
        equipment,
        description,
    )


def ultrasound_report(
    source: Dataset,
    seg: Dataset | None,
    findings: UltrasoundFindings,
    equipment: Equipment,
    description: str,
) -> hd.sr.Comprehensive3DSR:
    """Per frame where the structure is present, a planar group with its area referencing
    that frame of `seg`, and one of the same finding (its tracking UID) with its outline
    drawn on the source frame (an Image Region SCOORD polygon, which viewers show). Beside
    the summary, per frame the model is confident lacks it, that it is absent there; with
    neither, that its presence is indeterminate."""
    identity = findings.identity
    segment = findings.segment
    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    for seg_frame, area in enumerate(findings.present, start=1):
        assert seg is not None  # a present frame always has its SEG
        measured = (
            _measurement(codes.SCT.Area, area.area_mm2, _SQUARE_MILLIMETRE)
            if area.area_mm2 is not None
            else hd.sr.Measurement(name=codes.SCT.Area, value=area.area_px, unit=_PIXELS)
        )
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=_frame_tracking(identity, segment, area.frame),
            referenced_segment=hd.sr.ReferencedSegmentationFrame(
                sop_class_uid=UID(seg.SOPClassUID),
                sop_instance_uid=UID(seg.SOPInstanceUID),
                frame_number=seg_frame,
                segment_number=segment.number,
                source_image=hd.sr.SourceImageForSegmentation(
                    referenced_sop_class_uid=UID(source.SOPClassUID),
                    referenced_sop_instance_uid=UID(source.SOPInstanceUID),
                    referenced_frame_numbers=[area.frame],
                ),
            ),
            finding_type=coded(segment.type),
            measurements=[measured],
            qualitative_evaluations=_certainty(area.review),
        )
        groups.append(_frame_reference_only(group))
        if area.outline:
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=_frame_tracking(identity, segment, area.frame),
                    referenced_region=hd.sr.ImageRegion(
                        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,  # closed: a polygon
                        graphic_data=np.array(area.outline, dtype=np.float64),
                        source_image=hd.sr.SourceImageForRegion(
                            UID(source.SOPClassUID),
                            UID(source.SOPInstanceUID),
                            referenced_frame_numbers=[area.frame],
                        ),
                    ),
                    finding_type=coded(segment.type),
                    measurements=None,  # stated once, in the group above
                    qualitative_evaluations=_certainty(area.review),
                )
            )
    # What holds for frames without an outline is stated beside the summary, not as
    # measurement groups: a group that draws nothing stops OHIF 3 showing the report.
    stated = [_frame_absent(segment, source, frame) for frame in findings.absent]
    if not groups and not stated:
        stated.append(
            hd.sr.CodeContentItem(
                name=coded(segment.type),
                value=codes.SCT.Indeterminate,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(
            equipment, identity.software_version, identity.uid("device")
        ),
        procedure_reported=_US_PROCEDURE,
        imaging_measurements=groups,
    )
    summary = ultrasound_summary(findings, int(source.NumberOfFrames))
    return _document(
        [source] if seg is None else [source, seg],
        _with_summary(report, summary, stated),
        identity.object_uid("sr", "instance"),
        identity.object_uid("sr", "series"),
        equipment,
        description,
    )
