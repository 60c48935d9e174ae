"""Worklists (CSV), per-study PDF reports, the batch summary."""

#: The folder under OUT that holds the DICOM result objects: :mod:`cxrscreen.outputs.dicom` writes it,
#: ``cxrscreen send`` reads it. Defined here, not in that package, so reading it imports no highdicom or torch.
DICOM_DIR = "dicom"
