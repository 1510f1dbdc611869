"""Which torch modules are layers normfield knows: the activation modules by their registry names, and
the module types whose outputs get batch Gram diagnostics by default.

One table serves the measured route (:mod:`normfield.analyze.hooks`) and the predicted one
(:mod:`normfield.infinite.translate`), so both name and hook the same layers.
"""

from __future__ import annotations

from torch import nn

__all__ = ["ACTIVATION_MODULES", "ACTIVATION_TYPES", "DEFAULT_LAYER_TYPES", "activation_name_of"]

#: Activation modules with a fixed registry name (LeakyReLU and GELU depend on their arguments:
#: :func:`activation_name_of`).
ACTIVATION_MODULES: dict[type, str] = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.SiLU: "silu", nn.Sigmoid: "sigmoid",
                                       nn.SELU: "selu"}

#: Activation module types hooked by default (named in the registry or not).
ACTIVATION_TYPES: tuple[type, ...] = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.Sigmoid, nn.SELU,
                                      nn.ELU, nn.Softplus, nn.Hardtanh, nn.ReLU6, nn.Mish)

#: Module types hooked by default: linear maps, convolutions, normalizations, activations.
DEFAULT_LAYER_TYPES: tuple[type, ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
    *ACTIVATION_TYPES,
)


def activation_name_of(module: nn.Module) -> str | None:
    """The normfield activation name of an activation module, or None if unknown."""
    if isinstance(module, nn.LeakyReLU):
        return f"leaky_relu:{module.negative_slope}"
    if isinstance(module, nn.GELU):
        return "gelu" if module.approximate == "none" else None
    return ACTIVATION_MODULES.get(type(module))
