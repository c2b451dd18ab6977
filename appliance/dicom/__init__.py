"""The DICOM network edge: listener (Storage SCP), spool (durable storage), and later the sender."""
