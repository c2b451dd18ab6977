"""The DICOM network edge: listener (Storage SCP), spool (durable storage), sender (Storage
SCU) and the DICOMweb STOW-RS client."""
