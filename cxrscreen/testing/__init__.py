"""Building DICOM files for tests, benchmarks and sample data; not used by scan."""
