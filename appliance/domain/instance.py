"""The typed record of one received composite instance (PS3.3 patient/study/series/instance).

The listener parses each dataset once into an `InstanceRecord`; everything downstream takes the
record, never the raw dataset.
"""

from dataclasses import dataclass, field

from appliance.domain.uids import Uid


@dataclass(frozen=True, slots=True)
class PatientIdentity:
    """Patient-identifying attributes. Their `repr` is masked so they never leak into logs."""

    patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    accession_number: str | None = None

    def __repr__(self) -> str:
        return "PatientIdentity(<masked>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What the appliance needs to know about an instance to store, assemble and route it."""

    sop_class_uid: Uid
    sop_instance_uid: Uid
    study_instance_uid: Uid
    series_instance_uid: Uid
    transfer_syntax_uid: Uid
    modality: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    number_of_frames: int | None = None
    images_in_acquisition: int | None = None
    body_part_examined: str | None = None
    series_description: str | None = None
    study_description: str | None = None
    study_date: str | None = None
    patient: PatientIdentity = field(default_factory=PatientIdentity)
