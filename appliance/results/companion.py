"""A cine's companion for viewers: the ultrasound SEG is for machines (no viewer tried, OHIF,
Cornerstone3D or dcmqi, displays a SEG over a multi-frame US image, which has no Frame of
Reference), so beside it goes what every viewer displays, a Multi-frame True Color Secondary
Capture of the cine with the structure's outline drawn on each frame where it was found.

It is for display only, and says so: Image Type DERIVED\\SECONDARY, Burned In Annotation YES,
a series description naming it, and lossy JPEG baseline (4:2:2, quality 92, marked lossy),
which keeps a 100-frame cine to a few MB and costs a few milliseconds per frame.
"""

import io
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, MultiFrameTrueColorSecondaryCaptureImageStorage

from appliance.results.findings import UltrasoundFindings
from appliance.results.segmentation import Equipment

OUTLINED_SERIES_NUMBER = 9003
_QUALITY = 92
_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "FrameTime",
)  # fmt: skip
_GREY = (128, 128, 128)


def _jpeg(rgb: Image.Image) -> bytes:
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=_QUALITY, subsampling=1)  # 4:2:2
    return buffer.getvalue()


def outlined_cine(
    source: Dataset,
    frames: NDArray[np.uint8],
    findings: UltrasoundFindings,
    equipment: Equipment,
    description: str,
) -> Dataset:
    """The cine (`frames`: its luminance, frame by frame) with each present frame's outline
    drawn in the segment's display colour; `source` is the cine's data set (no pixels)."""
    identity = findings.identity
    colour = findings.segment.colour or _GREY
    outlines = {area.frame: area.outline for area in findings.present if area.outline}
    count, rows, columns = frames.shape
    encoded = []
    for index in range(count):
        image = Image.fromarray(frames[index]).convert("RGB")
        outline = outlines.get(index + 1)
        if outline:
            ImageDraw.Draw(image).line(list(outline), fill=colour, width=2)
        encoded.append(_jpeg(image))
    now = datetime.now(UTC)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    for keyword in _COPIED:  # Type 2 in their modules: present, if empty
        setattr(ds, keyword, source[keyword].value if keyword in source else "")
    if not ds.FrameTime:
        del ds.FrameTime
    ds.SOPClassUID = MultiFrameTrueColorSecondaryCaptureImageStorage
    ds.SOPInstanceUID = identity.object_uid("outlined", "instance")
    ds.SeriesInstanceUID = identity.object_uid("outlined", "series")
    ds.Modality = str(source.get("Modality", "US"))
    for keyword in ("BodyPartExamined", "Laterality"):
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    if "BodyPartExamined" not in ds and "Laterality" not in ds:
        ds.Laterality = ""  # Type 2C: a paired body part, for all we know; unknown
    ds.SeriesNumber = OUTLINED_SERIES_NUMBER
    ds.SeriesDescription = description
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.Manufacturer = equipment.manufacturer
    ds.ManufacturerModelName = equipment.model_name
    ds.SoftwareVersions = equipment.software_version
    ds.DeviceSerialNumber = equipment.device_serial_number
    ds.ConversionType = "WSD"  # made on a workstation
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "YES"
    ds.DerivationDescription = (
        f"{findings.segment.label} outlined by {identity.software_version}; for display only"
    )[:1024]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ds.SourceImageSequence = [reference]
    ds.PatientOrientation = source.get("PatientOrientation", "")
    ds.NumberOfFrames = count
    if "FrameTime" in ds:
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"  # what the IOD allows JPEG baseline
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ratio = frames.size * 3 / max(1, sum(len(frame) for frame in encoded))
    ds.LossyImageCompressionRatio = f"{ratio:.1f}"
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    return ds
