"""What the reference models were made for, as their contracts declare it
(`domain.applicability`): the acquisitions their phantoms cover, no wider."""

# Axial abdominal CT. Slices and pixels as the phantoms are made (slices 0.6 to 5 mm, pixels
# up to 7 mm for the small test grids); a scout (LOCALIZER) is never a volume.
ABDOMINAL_CT = {
    "modalities": ["CT"],
    "body_parts": ["ABDOMEN", "ABDOMENPELVIS", "CHESTABDOMEN", "CHESTABDPELVIS"],
    "excluded_image_types": ["LOCALIZER"],
    "photometric": ["MONOCHROME2", "MONOCHROME1"],
    "slice_thickness_mm": [0.5, 5.0],
    "pixel_spacing_mm": [0.4, 7.0],
    "field_of_view_mm": [200.0, 520.0],
}

# B-mode abdominal and intra-operative ultrasound from a curvilinear probe: Image Type's exam
# value (PS3.3 C.8.5.6.1.1) must say so, so an echocardiogram (EPICARDIAL, TRANSTHORACIC)
# or an obstetric scan never reaches the cyst model.
ABDOMINAL_US = {
    "modalities": ["US"],
    "image_types": ["ABDOMINAL", "INTRAOPERATIVE", "RETROPERITONEAL"],
    "rows": [128, 1200],
    "columns": [128, 1600],
}
