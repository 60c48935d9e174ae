"""cxrscreen: overnight chest X-ray triage (research use, not a medical device)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
