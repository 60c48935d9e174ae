"""The software version (also in pyproject.toml): in every output, run.json and DICOM object."""

__version__ = "0.1.0"
