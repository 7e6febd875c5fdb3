"""Imports every zoo module so its @register decorators fill the registry of `collapsekit.models`."""
from collapsekit.models import fastgrnn, lenet, llama, mobilenet, resnet, wrn  # noqa: F401
