"""A PyTorch model as a composition of infinite-width kernel layers.

:func:`translate` reads a model (an ``nn.Sequential`` or anything ``torch.fx``
can trace symbolically) and returns the kernel layers of
:mod:`normfield.infinite.layers` that compute, at infinite width, the per-unit
law of every hidden layer of *this* model: its widths, its parametrization and
the variances its parameters were drawn with.

The laws read off a module:

* ``nn.Linear`` (fan-in n, weight W, bias b) → ``Dense`` in standard
  parametrization with σ_w² = n·mean(W²) and σ_b² = mean(b²): the empirical
  second moments of the instance, the unbiased estimates of the variances
  W_ij ~ (σ_w²/n), b_i ~ σ_b² the parameters were drawn from (exact in the
  limit of infinite width, where every unit's law is the average over units;
  Neal 1996, Lee et al. 2018, eq. (4)). ``init=`` states them instead.
* ``nn.BatchNorm1d`` → ``BatchNorm`` in the module's mode (``.training``, or
  batch statistics whenever the module keeps no running statistics); eval mode
  carries the running statistics and the affine values per unit.
* ``nn.LayerNorm`` / ``nn.RMSNorm`` over the feature axis → ``LayerNorm`` /
  ``RMSNorm`` (at their initial affine γ = 1, β = 0).
* activation modules and their functional forms → ``Activation`` by registry name.
* ``nn.Flatten`` (of the input, or of a (T, d) tensor), ``nn.Identity``,
  ``nn.Dropout`` with p = 0 or in eval mode → nothing.
* ``a + b`` of two values (``operator.add``, ``torch.add``, ``Tensor.add``) →
  ``Residual(branch, shortcut)``, both written from the nearest value the two
  sides share.

Anything else is refused with the module's qualified name and type.
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from normfield.core.torch_layers import ACTIVATION_MODULES, DEFAULT_LAYER_TYPES, activation_name_of
from normfield.errors import NormfieldError

__all__ = ["Translation", "TranslatedLeaf", "translate", "SUPPORTED", "parse_init"]

#: What :func:`translate` reads, for error messages.
SUPPORTED = ("Linear, BatchNorm1d (train or eval), LayerNorm and RMSNorm over the features, activations "
             "(ReLU, LeakyReLU, Tanh, GELU(approximate='none'), SiLU, Sigmoid, SELU), Flatten, Identity, "
             "Dropout with p=0 or in eval mode, and residual sums a + b")

_ACT_FUNCTIONS: dict[Any, str] = {
    torch.relu: "relu", torch.nn.functional.relu: "relu", torch.tanh: "tanh", torch.sigmoid: "sigmoid",
    torch.nn.functional.silu: "silu", torch.nn.functional.selu: "selu", torch.selu: "selu",
    torch.nn.functional.gelu: "gelu", torch.nn.functional.tanh: "tanh", torch.nn.functional.sigmoid: "sigmoid",
}
_ACT_METHODS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
_ADDS = (operator.add, torch.add, operator.iadd)
_RESHAPES_F = (torch.flatten, torch.reshape)
_RESHAPES_M = ("flatten", "view", "reshape", "contiguous")


@dataclass(frozen=True)
class TranslatedLeaf:
    """One kernel layer and where it came from.

    Attributes:
        name: the module's qualified name in ``model.named_modules()`` (a torch.fx node name for a
            functional activation).
        type: the module type's name (``"relu"`` etc. for a functional activation).
        layer: the kernel layer (a ``Dense``, ``BatchNorm``, ``Activation`` ...).
        hooked: ``nf.analyze`` hooks this module by default (its batch Gram is measured under ``name``).
    """

    name: str
    type: str
    layer: Any
    hooked: bool


@dataclass(frozen=True)
class Translation:
    """A model as kernel layers.

    Attributes:
        layers: top-level kernel layers; ``Serial(*layers)`` is the model at infinite width.
        leaves: every leaf kernel layer with its module, in the model's execution order.
        flatten_input: the model flattens its (T, ...) input first.
        output_width: C, the model's outputs per sample.
    """

    layers: tuple[Any, ...]
    leaves: tuple[TranslatedLeaf, ...]
    flatten_input: bool
    output_width: int


def parse_init(init: Any, linear_names: list[str]) -> dict[str, dict[str, float]]:
    """The stated σ_w², σ_b² per Linear.

    Args:
        init: ``None`` (read every Linear's parameters), ``{"sw2": a, "sb2": b}`` (every Linear; a key may
            be left out to read it), or ``{module_name: {"sw2": a, "sb2": b}, ...}`` per Linear.
        linear_names: qualified names of the model's Linear modules.

    Returns:
        {module_name: {"sw2"?: float, "sb2"?: float}} for the Linears with a stated value.
    """
    if init is None:
        return {}
    if not isinstance(init, Mapping):
        raise NormfieldError(f"init must be None, {{'sw2': .., 'sb2': ..}} or {{module_name: {{...}}}}, got "
                             f"{type(init).__name__}", argument="init")

    def check(d: Any, where: str) -> dict[str, float]:
        if not isinstance(d, Mapping) or not d or set(d) - {"sw2", "sb2"}:
            raise NormfieldError(f"init{where} must be a dict with keys 'sw2' and/or 'sb2', got {d!r}",
                                 argument="init")
        out = {}
        for k, v in d.items():
            if not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
                raise NormfieldError(f"init{where}[{k!r}] must be a finite number >= 0, got {v!r}", argument="init")
            out[k] = float(v)
        return out

    if set(init) <= {"sw2", "sb2"}:
        glob = check(init, "")
        return {n: dict(glob) for n in linear_names}
    out = {}
    for name, d in init.items():
        if name not in linear_names:
            raise NormfieldError(f"init: {name!r} is not a Linear module of the model; Linear modules: "
                                 f"{', '.join(linear_names) or 'none'}", argument="init")
        out[name] = check(d, f"[{name!r}]")
    return out


@contextlib.contextmanager
def _buffers_kept(model: nn.Module) -> Iterator[None]:
    """Run a forward pass and give every buffer (batch-norm running statistics) back unchanged."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.no_grad():
            yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


def _refuse(name: str, module: Any, why: str = "") -> NormfieldError:
    what = type(module).__name__ if not isinstance(module, str) else module
    return NormfieldError(f"model: {name or '(root)'} ({what}) has no infinite-width kernel here{why}; supported: "
                          f"{SUPPORTED}", argument="model")


class _Builder:
    """Walks the traced graph; every value is (anchor node, layers from the anchor's value)."""

    def __init__(self, gm: torch.fx.GraphModule, init: dict[str, dict[str, float]], x: torch.Tensor):
        import normfield.infinite as L

        self.L = L
        self.gm = gm
        self.init = init
        self.x = x
        self.leaves: list[TranslatedLeaf] = []
        self.flatten_input = False
        self.seen_modules: set[str] = set()

    # -- one module ----------------------------------------------------------------------
    def module_layer(self, name: str, m: nn.Module, in_shape: tuple[int, ...], from_input: bool) -> Any | None:
        L = self.L
        if isinstance(m, (nn.Flatten,)):
            if len(in_shape) > 2 and not from_input:
                raise _refuse(name, m, " (it flattens a tensor of more than two axes inside the model)")
            if len(in_shape) > 2:
                self.flatten_input = True
            return None
        if len(in_shape) != 2:
            raise _refuse(name, m, f" on an input of shape {tuple(in_shape)}; the model must act on (T, d) "
                          "features (flatten the input first)")
        if isinstance(m, nn.Identity):
            return None
        if isinstance(m, nn.modules.dropout._DropoutNd):
            if m.training and m.p > 0:
                raise _refuse(name, m, f" in training mode with p={m.p} (random); set p=0 or call .eval() on it")
            return None
        if name in self.seen_modules and any(True for _ in m.parameters()):
            raise _refuse(name, m, " called twice (shared parameters)")
        self.seen_modules.add(name)
        if isinstance(m, nn.Linear):
            W = m.weight.detach().double()
            stated = self.init.get(name, {})
            sw2 = stated.get("sw2", float(W.shape[1] * (W ** 2).mean()))
            has_b = m.bias is not None
            sb2 = stated.get("sb2", float((m.bias.detach().double() ** 2).mean()) if has_b else 0.0)
            return L.Dense(m.out_features, sw2=sw2, sb2=sb2, bias=has_b, parametrization="standard")
        if isinstance(m, nn.BatchNorm1d):
            batch_stats = m.training or (m.running_mean is None and m.running_var is None)  # torch's rule
            if batch_stats:
                if m.affine and not (bool(torch.all(m.weight == 1)) and bool(torch.all(m.bias == 0))):
                    raise _refuse(name, m, " in train mode with an affine other than weight=1, bias=0 (the "
                                  "train-mode kernel is at the initial affine)")
                return L.BatchNorm(eps=float(m.eps), mode="train", affine=bool(m.affine))
            w = m.weight.detach().double().numpy() if m.affine else 1.0
            b = m.bias.detach().double().numpy() if m.affine else 0.0
            return L.BatchNorm(eps=float(m.eps), mode="eval", affine=bool(m.affine),
                               running_mean=m.running_mean.detach().double().numpy(),
                               running_var=m.running_var.detach().double().numpy(), weight=w, bias=b)
        if isinstance(m, nn.LayerNorm) or (hasattr(nn, "RMSNorm") and isinstance(m, nn.RMSNorm)):
            if tuple(m.normalized_shape) != (in_shape[1],):
                raise _refuse(name, m, f" over {tuple(m.normalized_shape)}, not the {in_shape[1]} features")
            aff = bool(m.elementwise_affine)
            if aff:
                b = getattr(m, "bias", None)
                ok = bool(torch.all(m.weight == 1)) and (b is None or bool(torch.all(b == 0)))
                if not ok:
                    raise _refuse(name, m, " with an affine other than weight=1, bias=0")
            if isinstance(m, nn.LayerNorm):
                if aff and m.bias is None:
                    raise _refuse(name, m, " without a bias (bias=False)")
                return L.LayerNorm(eps=float(m.eps), affine=aff)
            eps = m.eps if m.eps is not None else float(torch.finfo(self.x.dtype).eps)
            return L.RMSNorm(eps=float(eps), affine=aff)
        act = activation_name_of(m)
        if act is not None:
            return L.Activation(act)
        raise _refuse(name, m)

    def leaf(self, name: str, kind: str, layer: Any, hooked: bool) -> Any:
        self.leaves.append(TranslatedLeaf(name=name, type=kind, layer=layer, hooked=hooked))
        return layer

    # -- the graph ---------------------------------------------------------------------------
    # Each value of the traced graph is written as (anchor, layers): the layers that take the value
    # at ``anchor`` (the input, or a fan-out point read more than once) to it. A residual sum walks both
    # sides back to their nearest shared anchor and becomes one Residual layer from there.
    def build(self) -> tuple[Any, ...]:
        graph = self.gm.graph
        self.users = {n: len(n.users) for n in graph.nodes}
        self.order = {n: i for i, n in enumerate(graph.nodes)}
        self.val: dict[Any, tuple[Any, list]] = {}   # node -> (anchor node, layers from anchor)
        self.defs: dict[Any, tuple[Any, list]] = {}  # anchor node -> (its anchor, layers); input: (None, [])
        self.placeholder = None
        for n in graph.nodes:
            if n.op == "output":
                return self._output(n)
            self._node(n)
        raise NormfieldError("model: the traced graph has no output", argument="model")  # pragma: no cover

    def _node(self, n) -> None:
        """Write the value of one graph node (anything but the output), or refuse it."""
        if n.op == "placeholder":
            if self.placeholder is not None:
                raise NormfieldError("model: forward takes more than one input; nf.predict supports one "
                                     "(T, d) tensor", argument="model")
            self.placeholder = n
            self.defs[n] = (None, [])
            self.val[n] = (n, [])
            return
        if n.op == "get_attr":
            raise NormfieldError(f"model: {n.target} is read as a tensor inside forward; nf.predict supports "
                                 f"modules and residual sums only ({SUPPORTED})", argument="model")
        args = [a for a in n.args if isinstance(a, torch.fx.Node)]
        if n.op == "call_module":
            m = self.gm.get_submodule(n.target)
            src = args[0]
            lay = self.module_layer(str(n.target), m, _shape(src), src is self.placeholder)
            anchor, path = self.val[src]
            self._settle(n, anchor, path + ([self.leaf(str(n.target), type(m).__name__, lay, _hooked(m))]
                                            if lay is not None else []))
            return
        fn = n.target
        if (n.op == "call_function" and fn in _ADDS) or (n.op == "call_method" and fn in ("add", "add_")):
            self._add(n, args)
        elif not (self._activation(n, args) or self._reshape(n, args)):
            what = fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))
            raise _refuse(n.name, f"{n.op} {what}")

    def _settle(self, n, anchor, path) -> None:
        if self.users[n] > 1:  # a fan-out point: later values are written from it
            self.defs[n] = (anchor, path)
            self.val[n] = (n, [])
        else:
            self.val[n] = (anchor, path)

    def _lift(self, anchor) -> tuple[Any, list]:
        a, p = self.defs[anchor]
        return a, list(p)

    def _output(self, n) -> tuple[Any, ...]:
        out = n.args[0]
        if not isinstance(out, torch.fx.Node):
            raise NormfieldError("model: the output is not one tensor", argument="model")
        anchor, path = self.val[out]
        result = list(path)
        while anchor is not None and anchor is not self.placeholder:
            anchor, p = self._lift(anchor)
            result = p + result
        if len(_shape(out)) != 2:
            raise NormfieldError(f"model: the output has shape {_shape(out)}, not (T, C)", argument="model")
        return tuple(result), _shape(out)[1]

    def _add(self, n, args) -> None:
        """A residual sum a + b: both sides written from their nearest shared value."""
        if len(args) != 2 or len(n.args) != 2 or n.kwargs:
            raise NormfieldError(f"model: {n.name} ({n.format_node()}) adds a constant or scales a term; "
                                 "only sums a + b of two values are supported", argument="model")
        if _shape(args[0]) != _shape(args[1]) or len(_shape(n)) != 2:
            raise NormfieldError(f"model: {n.name} adds values of shapes {_shape(args[0])} and "
                                 f"{_shape(args[1])}; residual sums of (T, d) features only", argument="model")
        (a0, p0), (a1, p1) = self.val[args[0]], self.val[args[1]]
        while a0 is not a1:
            if self.order[a0] > self.order[a1]:
                a, p = self._lift(a0)
                a0, p0 = a, p + p0
            else:
                a, p = self._lift(a1)
                a1, p1 = a, p + p1
        short, branch = (p0, p1) if len(p0) <= len(p1) else (p1, p0)
        L = self.L
        self._settle(n, a0, [L.Residual(L.Serial(*branch), None if not short else L.Serial(*short))])

    def _activation(self, n, args) -> bool:
        """An activation called as a function or a tensor method; False if ``n`` is none."""
        fn, act = n.target, None
        if n.op == "call_function" and fn in _ACT_FUNCTIONS:
            act = _ACT_FUNCTIONS[fn]
            if act == "gelu" and n.kwargs.get("approximate", "none") != "none":
                act = None
        elif n.op == "call_method" and fn in _ACT_METHODS:
            act = _ACT_METHODS[fn]
        if act is None or len(args) != 1 or len(n.args) != 1:
            return False
        if len(_shape(args[0])) != 2:
            raise _refuse(n.name, act, f" on an input of shape {_shape(args[0])}")
        anchor, path = self.val[args[0]]
        self._settle(n, anchor, path + [self.leaf(n.name, act, self.L.Activation(act), False)])
        return True

    def _reshape(self, n, args) -> bool:
        """A reshape that changes nothing, or flattens the input to (T, d); False otherwise."""
        fn = n.target
        reshape = (n.op == "call_function" and fn in _RESHAPES_F) or (n.op == "call_method" and fn in _RESHAPES_M)
        if not (reshape and args):
            return False
        s_in, s_out = _shape(args[0]), _shape(n)
        if not (s_in == s_out or (args[0] is self.placeholder and len(s_out) == 2 and s_out[0] == s_in[0])):
            return False
        if s_in != s_out:
            self.flatten_input = True
        anchor, path = self.val[args[0]]
        self._settle(n, anchor, path)
        return True


def _shape(n) -> tuple[int, ...]:
    """The shape of a traced value (refused when it is not one tensor)."""
    meta = n.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise NormfieldError(f"model: the value {n.name} is not one tensor; only single-tensor models "
                             "are supported", argument="model")
    return tuple(meta.shape)


def _hooked(m: nn.Module) -> bool:
    """Does ``nf.analyze`` hook this module type by default (linear, normalization, activation modules)."""
    return isinstance(m, DEFAULT_LAYER_TYPES)


def translate(model: nn.Module, inputs: torch.Tensor, *, init: Any = None) -> Translation:
    """Kernel layers of ``model`` (see the module docstring for what is read off each module).

    The model is traced symbolically (``torch.fx``; an ``nn.Sequential`` traces to its chain) and run once on
    ``inputs`` for the shapes; its buffers (batch-norm running statistics) are given back unchanged.

    Args:
        model: the network; forward takes one tensor (T, ...) and returns (T, C).
        inputs: the batch, shape (T, ...), floating point.
        init: stated σ_w², σ_b² (see :func:`parse_init`); default: read from each Linear.

    Returns:
        :class:`Translation`.

    Raises:
        NormfieldError: a module without a kernel here (named with its type and the supported list); a model
            ``torch.fx`` cannot trace; a bad ``init``.
    """
    from torch.fx.passes.shape_prop import ShapeProp

    if not isinstance(model, nn.Module):
        raise NormfieldError(f"model must be a torch.nn.Module, got {type(model).__name__}", argument="model")
    for name, m in model.named_modules():  # refuse by name before tracing (a Conv2d may not trace at all)
        if not list(m.children()) and not isinstance(m, _KNOWN) and any(True for _ in m.parameters(recurse=False)):
            raise _refuse(name, m)
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - data-dependent control flow and the like
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NormfieldError(f"model: torch.fx cannot trace it ({type(e).__name__}: {msg}); write it as an "
                             "nn.Sequential or without data-dependent control flow", argument="model") from None
    linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    stated = parse_init(init, linear_names)
    with _buffers_kept(model):
        ShapeProp(gm).propagate(inputs)
    b = _Builder(gm, stated, inputs)
    layers, C = b.build()
    return Translation(layers=layers, leaves=tuple(b.leaves), flatten_input=b.flatten_input, output_width=int(C))


_KNOWN: tuple[type, ...] = (nn.Linear, nn.BatchNorm1d, nn.LayerNorm, nn.Identity, nn.Flatten,
                            nn.modules.dropout._DropoutNd, nn.LeakyReLU, nn.GELU, *ACTIVATION_MODULES)
if hasattr(nn, "RMSNorm"):
    _KNOWN = (*_KNOWN, nn.RMSNorm)
