"""DICOM Segmentation objects (PS3.3 A.51, A.78) from a run's findings, with highdicom.

CT: one SEG per run over the source series, frames placed by the source geometry, segments
coded from the model contracts. Either the Label Map Segmentation IOD (one lossless-compressed
frame per slice) or the classic BINARY type (one bit-packed frame per segment and slice, empty
frames left out), since some receivers do not yet accept the Label Map SOP class.

Ultrasound: a multi-frame US image has no Frame of Reference, and highdicom 0.28 builds a SEG
without one for a single source frame only. The SEG IOD needs neither a Frame of Reference nor
plane positions when every frame says which source frame it derives from (Derivation Image
functional group, Source Image Sequence with Referenced Frame Number, PS3.3 C.7.6.16.2.6). So
highdicom builds the SEG for one frame, and `us_segmentation` then gives it one frame per
source frame where the structure is present, each referencing its source frame and indexed by
that frame's temporal position.
"""

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.utils import pack_bits
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import (
    ExplicitVRLittleEndian,
    RLELossless,
    UltrasoundImageStorage,
)

from appliance.domain.concepts import CodedConcept
from appliance.domain.findings import Segment, SegmentationType
from appliance.results.findings import CTFindings, UltrasoundFindings
from appliance.results.rle import rle_frames

SEG_SERIES_NUMBER = 9001


@dataclass(frozen=True)
class Equipment:
    """The device that makes the results (General Equipment and Enhanced General Equipment)."""

    manufacturer: str
    model_name: str
    software_version: str
    device_serial_number: str


def coded(code: CodedConcept) -> hd.sr.CodedConcept:
    """The domain's coded concept as highdicom's, at the encoding boundary."""
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def _description(segment: Segment) -> hd.seg.SegmentDescription:
    description = hd.seg.SegmentDescription(
        segment_number=segment.number,
        segment_label=f"{segment.label} (low confidence)" if segment.review else segment.label,
        segmented_property_category=coded(segment.category),
        segmented_property_type=coded(segment.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=segment.algorithm.name,
            version=str(segment.algorithm.version),
            family=codes.cid7162.ArtificialIntelligence,
        ),
        tracking_uid=segment.tracking_uid,
        tracking_id=segment.tracking_id,
        anatomic_regions=[coded(segment.finding_site)] if segment.finding_site else None,
        display_color=hd.color.CIELabColor.from_rgb(*segment.colour) if segment.colour else None,
    )
    if segment.review:  # Segment Description (ST) says why, for viewers that show it
        description.SegmentDescription = ("Low confidence, review: " + "; ".join(segment.review))[
            :1024
        ]
    if segment.type_modifier is not None:  # highdicom has no argument for it (PS3.3 C.8.20.2)
        (item,) = description.SegmentedPropertyTypeCodeSequence
        item.SegmentedPropertyTypeModifierCodeSequence = [coded(segment.type_modifier)]
    return description


def _common(equipment: Equipment, description: str) -> dict[str, object]:
    return {
        "series_number": SEG_SERIES_NUMBER,
        "instance_number": 1,
        "manufacturer": equipment.manufacturer,
        "manufacturer_model_name": equipment.model_name,
        "software_versions": equipment.software_version,
        "device_serial_number": equipment.device_serial_number,
        "series_description": description,
        "content_label": "AI_RESULT",
        "content_description": description,
    }


def ct_segmentation(
    sources: Sequence[Dataset],
    findings: CTFindings,
    kind: SegmentationType,
    equipment: Equipment,
    description: str,
) -> hd.seg.Segmentation:
    """`sources`: the series' data sets (pixel data not needed) in the order of the label
    map's slices."""
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=findings.labels,
        segmentation_type=hd.seg.SegmentationTypeValues(kind.value.upper()),
        segment_descriptions=[_description(segment) for segment in findings.segments],
        series_instance_uid=findings.identity.object_uid("seg", "series"),
        sop_instance_uid=findings.identity.object_uid("seg", "instance"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=True,
        **_common(equipment, description),  # type: ignore[arg-type]
    )
    if kind is SegmentationType.LABELMAP:
        _compress_rle(seg)
    return seg


def _compress_rle(seg: hd.seg.Segmentation) -> None:
    """The label map's frames, as highdicom wrote them uncompressed, to RLE Lossless: the
    same object highdicom makes with RLE, at a tenth of its encoder's time."""
    dtype = np.uint8 if seg.BitsAllocated == 8 else np.dtype("<u2")
    pixels = seg.NumberOfFrames * seg.Rows * seg.Columns
    frames = np.frombuffer(seg.PixelData, dtype=dtype)[:pixels]
    seg.file_meta.TransferSyntaxUID = RLELossless
    seg.PixelData = encapsulate(rle_frames(frames.reshape(-1, seg.Rows, seg.Columns)))


_FRAME_CONTENT = Tag("FrameContentSequence")
_TEMPORAL_POSITION_INDEX = Tag("TemporalPositionIndex")


def us_segmentation(
    source: Dataset, findings: UltrasoundFindings, equipment: Equipment, description: str
) -> Dataset:
    """A BINARY SEG of a multi-frame ultrasound `source` (pixel data not needed): one frame per
    source frame where the structure is present. Raises ValueError when there is none."""
    frames = [area.frame for area in findings.present]
    if not frames:
        raise ValueError("the structure is present in no frame: there is nothing to segment")
    # highdicom's single-frame path, on a single-frame view of the source's header.
    single = copy.deepcopy(source)
    single.SOPClassUID = UltrasoundImageStorage
    for keyword in ("NumberOfFrames", "FrameIncrementPointer", "FrameTime", "PixelData"):
        if keyword in single:
            delattr(single, keyword)
    seg = hd.seg.Segmentation(
        source_images=[single],
        pixel_array=findings.masks[frames[0] - 1][None].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_description(findings.segment)],
        series_instance_uid=findings.identity.object_uid("seg", "series"),
        sop_instance_uid=findings.identity.object_uid("seg", "instance"),
        omit_empty_frames=False,
        **_common(equipment, description),  # type: ignore[arg-type]
    )
    for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence:
        item.ReferencedSOPClassUID = source.SOPClassUID
    template = seg.PerFrameFunctionalGroupsSequence[0]
    per_frame = []
    for frame in frames:
        item = copy.deepcopy(template)
        reference = item.DerivationImageSequence[0].SourceImageSequence[0]
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedFrameNumber = frame
        content = item.FrameContentSequence[0]
        content.TemporalPositionIndex = frame
        content.DimensionIndexValues = [findings.segment.number, frame]
        per_frame.append(item)
    seg.PerFrameFunctionalGroupsSequence = per_frame
    temporal = Dataset()
    temporal.DimensionOrganizationUID = seg.DimensionIndexSequence[0].DimensionOrganizationUID
    temporal.DimensionIndexPointer = _TEMPORAL_POSITION_INDEX
    temporal.FunctionalGroupPointer = _FRAME_CONTENT
    temporal.DimensionDescriptionLabel = "Temporal Position Index"
    seg.DimensionIndexSequence.append(temporal)
    seg.NumberOfFrames = len(frames)
    seg.PixelData = pack_bits(findings.masks[[f - 1 for f in frames]].astype(np.uint8))
    seg.PatientOrientation = source.get("PatientOrientation", "")  # Type 2C without a FoR
    return seg
