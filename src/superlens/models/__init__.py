from superlens.models.resnet import BasicBlock, ResNet, resnet18
from superlens.models.weights import IMAGENET1K_V1, load_weights
from superlens.models.build import build_model, config_model, trained_model

__all__ = ["BasicBlock", "ResNet", "resnet18", "load_weights", "IMAGENET1K_V1", "build_model", "config_model", "trained_model"]
