"""ResNet50 classifier: architecture, model files, inference."""

from cxrscreen.model.architecture import build_resnet50, load_torchvision_backbone
from cxrscreen.model.files import LoadedModel, ModelIntegrityError, load_model, save_model

__all__ = [
    "LoadedModel",
    "ModelIntegrityError",
    "build_resnet50",
    "load_model",
    "load_torchvision_backbone",
    "save_model",
]
