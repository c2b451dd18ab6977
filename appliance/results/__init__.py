"""Results: a run's findings encoded as DICOM SEG and TID 1500 SR, checked before sending."""
