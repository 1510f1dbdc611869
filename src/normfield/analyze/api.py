"""``nf.analyze``: the two papers' diagnostics for any PyTorch module at initialization."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from normfield.analyze._functional import ModelFunction, model_state_guard, select_parameters
from normfield.analyze.hooks import layer_gram_rows
from normfield.analyze.cost import DEFAULT_TRACE_RTOL, default_tol, parse_budget
from normfield.analyze.ntk import fisher_spectra
from normfield.core.jacobian import ROUTES, is_oom
from normfield.analyze.result import AnalysisResult
from normfield.core.validation import (
    check_batch_for_norm,
    check_choice,
    check_device,
    check_finite_array,
    check_int,
    check_memory,
)
from normfield.errors import NormfieldError

__all__ = ["analyze", "WHAT_IF"]

#: Supported ``what_if`` variants.
WHAT_IF = ("last-mean",)

_DTYPES = {"float32": torch.float32, "float64": torch.float64, torch.float32: torch.float32,
           torch.float64: torch.float64}


def _resolve_device(device: Any, model: nn.Module) -> torch.device:
    if device is None:
        for t in list(model.parameters()) + list(model.buffers()):
            return t.device
        return torch.device("cpu")
    return check_device("device", device, as_torch=True)


def _resolve_dtype(dtype: Any, model: nn.Module) -> torch.dtype:
    if dtype is None:
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32
        return torch.float64
    if dtype not in _DTYPES:
        raise NormfieldError(f"dtype must be float32 or float64, got {dtype!r}", argument="dtype")
    return _DTYPES[dtype]


def _as_inputs(inputs: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(inputs, np.ndarray):
        inputs = torch.from_numpy(inputs)
    if not isinstance(inputs, torch.Tensor):
        raise NormfieldError(
            f"inputs must be a tensor or NumPy array of shape (batch, ...), got {type(inputs).__name__}",
            argument="inputs")
    if inputs.dim() < 1 or inputs.shape[0] < 1:
        raise NormfieldError(f"inputs must have a batch dimension with >= 1 sample, got shape {tuple(inputs.shape)}",
                             argument="inputs")
    check_memory("inputs", inputs.numel() * torch.empty((), dtype=dtype).element_size(),
                 hint="pass a smaller batch, e.g. inputs[:256]")
    if inputs.is_floating_point():
        check_finite_array("inputs", inputs)
        inputs = inputs.to(device=device, dtype=dtype)
    else:  # token ids and the like
        inputs = inputs.to(device=device)
    return inputs


@contextlib.contextmanager
def _full_precision_float32():
    """TF32 off for the analysis (CUDA convolutions use it by default; its ~1e-3 relative rounding is
    above the 1e-4 float32 accuracy target), restored afterwards."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def analyze(
    model: nn.Module,
    inputs: torch.Tensor | np.ndarray,
    *,
    outputs: Callable[[Any], torch.Tensor] | Sequence[int] | str | None = None,
    parameters: Sequence[str] | str | None = None,
    layers: Any = "auto",
    fisher: bool = True,
    k: int = 5,
    method: str = "auto",
    what_if: str | Sequence[str] | None = None,
    what_if_k: int = 1,
    mode: str = "as-is",
    dtype: Any = None,
    device: Any = None,
    tol: float | None = None,
    trace: str = "auto",
    probes: int | None = None,
    trace_rtol: float = DEFAULT_TRACE_RTOL,
    budget: Any = None,
    jvp: str = "auto",
    dense_max: int = 256,
    chunk: int | None = None,
    collapse_threshold: float = 0.9,
    density: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> AnalysisResult:
    """Normalization diagnostics of ``model`` on the batch ``inputs``.

    Computes (i) for every hooked layer the batch Gram matrix of its output,
    its spectrum, conditioning, rank-collapse indicators and the distance to
    the batch-norm fixed point G* (Joudaki et al. 2023, eqs. (2), (10)); (ii)
    the Fisher/NTK dual F* = J Jᵀ/T of the outputs with respect to the chosen
    parameters over the whole batch (Karakida et al. 2019, eq. (8)): λ_max,
    m_λ = tr(F*)/P (eq. (10)), the top-k eigenvalues and the learning-rate
    bound 2/λ_max (eq. (23)); (iii) optionally the same with last-layer mean
    subtraction f̄ = f − E_batch[f] (eq. (15), Thm 3.3) added after the model.

    The model is given back exactly as it came: parameters, buffers (batch-norm
    running statistics, ``num_batches_tracked``), train/eval flags and
    ``.grad`` are untouched. Train-mode batch norm uses batch statistics and
    couples the samples; the whole batch is differentiated together so the
    coupling is exact.

    Args:
        model: any ``nn.Module`` whose forward takes one tensor of shape (T, ...).
        inputs: the batch, shape (T, ...).
        outputs: ``None`` (the model's output, reshaped to (T, C); of a tuple
            output its first element, of a dict/dataclass output its ``logits``
            or only floating tensor), a field name (``"logits"``), a callable
            mapping the model's output to a tensor (e.g. ``lambda o: o["logits"]``),
            or a sequence of output columns to keep.
        parameters: names or glob patterns of the parameters to differentiate
            (default: every parameter with ``requires_grad``).
        layers: layers to hook for Gram diagnostics: ``"auto"`` (linear, conv,
            normalization and activation modules), ``"none"``, module types, or
            names / glob patterns.
        fisher: compute the Fisher/NTK statistics.
        k: number of leading Fisher eigenvalues to report.
        method: ``"dense"`` (exact F*, every eigenvalue), ``"lanczos"``
            (matrix-free) or ``"auto"`` (dense when T·C <= ``dense_max``).
        what_if: ``"last-mean"`` (or a list of variants) to also analyze.
        what_if_k: leading eigenvalues of each variant (default 1: its λ_max, m_λ and
            learning-rate bound). Mean subtraction leaves the flat top of the bulk, whose
            next eigenvalues lie within a few percent of each other and take
            Lanczos several times the steps λ_max does (a CIFAR ResNet-18: 65–70 steps for
            the top 5 to a 1e-4 residual, 17 for λ_max from the main run's warm start);
            pass ``what_if_k=k`` when they are wanted.
        mode: ``"as-is"``, ``"train"`` or ``"eval"`` (applied during the
            analysis only).
        dtype: analysis dtype, ``"float64"`` / ``"float32"`` (default: the
            model's); the model is not cast, copies are.
        device: analysis device (default: the model's).
        tol: relative accuracy of the Lanczos eigenvalues (default 1e-4 in
            float32, 1e-8 in float64).
        trace: how the Lanczos route gets tr(F*): ``"exact"`` (T·C VJPs),
            ``"hutchinson"`` (deflated by the Lanczos basis, with a standard
            error) or ``"auto"`` (exact when no dearer than the Lanczos run).
        probes: Hutchinson probes (default: adaptive until the standard error
            is at most ``trace_rtol`` of the trace: ±1 % as one standard error by default).
        trace_rtol: target relative standard error of a stochastic trace.
        budget: a limit for the Fisher part: products (int) or seconds
            (``"30s"``); when it runs out the result says so (``converged``
            False) with the error estimates reached (``lambda_max_rel_error``,
            ``trace_stderr``).
        jvp: how Jacobian–vector products are formed: ``"auto"`` (forward
            mode, then the math attention/RNN kernels, then the double-VJP
            identity, whichever works first) or one of
            :data:`normfield.core.jacobian.ROUTES`.
        dense_max: largest T·C for the automatic dense route.
        chunk: Jacobian rows per vmapped product (default: ~128 MiB of rows).
        collapse_threshold: a layer is flagged ``collapsed`` when λ_1(G)/tr(G)
            is at least this.
        density: also compute the spectral density of F* (exact on the dense
            route, stochastic Lanczos quadrature otherwise); see
            :meth:`normfield.analyze.FisherSpectrum.density`.
        seed: seeds the Lanczos start vector and Hutchinson probes.
        progress: show a progress bar in Jacobian products.

    Returns:
        :class:`normfield.analyze.AnalysisResult`.

    Raises:
        NormfieldError: bad arguments; a model output that is not a tensor;
            a batch of one sample under train-mode batch norm; dropout in
            training mode; no parameter requiring grad; a batch too large for
            memory; a forward pass that fails on ``inputs``.

    Example:
        >>> import torch, normfield as nf
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.BatchNorm1d(32),
        ...                           torch.nn.ReLU(), torch.nn.Linear(32, 2)).double()
        >>> res = nf.analyze(net, torch.randn(16, 8, dtype=torch.float64), what_if="last-mean")
        >>> res.lambda_max > res.what_if["last-mean"].lambda_max
        True
    """
    if not isinstance(model, nn.Module):
        raise NormfieldError(f"model must be a torch.nn.Module, got {type(model).__name__}", argument="model")
    check_choice("mode", mode, ["as-is", "train", "eval"])
    check_choice("method", method, ["auto", "dense", "lanczos"])
    k = check_int("k", k, minimum=1)
    what_if_k = check_int("what_if_k", what_if_k, minimum=1)
    dense_max = check_int("dense_max", dense_max, minimum=1)
    check_choice("jvp", jvp, ["auto", *ROUTES])
    budget_ = parse_budget(budget)
    if tol is not None and not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise NormfieldError(f"tol must be a number in (0, 1), got {tol!r}", argument="tol")
    if what_if is None:
        variants: list[str] = []
    else:
        variants = [what_if] if isinstance(what_if, str) else list(what_if)
    for v in variants:
        check_choice("what_if", v, WHAT_IF)
    dev = _resolve_device(device, model)
    dt = _resolve_dtype(dtype, model)
    x = _as_inputs(inputs, dt, dev)
    T = int(x.shape[0])
    with model_state_guard(model, mode), _full_precision_float32():
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if any(m.training for m in bns):
            if T < 2:
                raise NormfieldError(
                    "inputs: batch size 1 under train-mode batch norm (batch statistics of one sample are "
                    "degenerate); pass at least 2 samples, or analyze in eval mode with mode='eval'",
                    argument="inputs")
            check_batch_for_norm("inputs batch size", T, "bn")
        drop = [n for n, m in model.named_modules()
                if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0]
        if drop:
            raise NormfieldError(
                f"mode: dropout in training mode ({', '.join(drop[:3])}) makes the Jacobian random; analyze at "
                "mode='eval' (batch norm then uses running statistics), or set the dropout p=0 / call .eval() "
                "on the dropout modules only", argument="mode")
        if "last-mean" in variants and T < 2:
            raise NormfieldError("inputs: what_if='last-mean' subtracts the batch mean and needs >= 2 samples",
                                 argument="inputs")
        names = select_parameters(model, parameters) if fisher else [n for n, _ in model.named_parameters()]
        fn = ModelFunction.build(model, x, names, dtype=dt, device=dev, outputs=outputs)
        # one guarded forward: output checks, per-layer Grams, activation memory
        act_bytes = [0]
        leaf_handles = []

        def count(mod, inp, out):
            if isinstance(out, torch.Tensor):
                act_bytes[0] += out.numel() * out.element_size()

        try:
            for m in model.modules():
                if not list(m.children()):
                    leaf_handles.append(m.register_forward_hook(count))
            out_holder: list[torch.Tensor] = []
            layers_df, grams = layer_gram_rows(model, lambda: out_holder.append(fn.raw(fn.theta)), layers,
                                               collapse_threshold=collapse_threshold)
        except NormfieldError:
            raise
        except Exception as e:  # noqa: BLE001
            if is_oom(e):
                raise NormfieldError(f"inputs: the forward pass on a batch of {T} does not fit in memory; "
                                     "pass a smaller batch (inputs[:n]) or dtype='float32'",
                                     argument="inputs") from None
            if isinstance(e, (RuntimeError, TypeError, ValueError, IndexError)):
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise NormfieldError(
                    f"inputs: model(inputs) failed for inputs of shape {tuple(x.shape)} "
                    f"({type(e).__name__}: {msg}); check the input shape and layout the model expects",
                    argument="inputs") from e
            raise
        finally:
            for h in leaf_handles:
                h.remove()
        out = out_holder[0]
        if not out.is_floating_point():
            raise NormfieldError(f"model output must be a floating-point tensor, got {out.dtype}", argument="outputs")
        check_finite_array("model output", out)
        fisher_res = None
        what: dict[str, Any] = {}
        if fisher:
            # the vjp keeps the forward's activations; vmapped dense products keep `chunk` copies
            check_memory("inputs", 3 * act_bytes[0],
                         hint=f"the graph of a forward pass on {T} samples is too large; pass a smaller batch "
                              "(inputs[:n]) or dtype='float32'")
            try:
                fisher_res, what = fisher_spectra(
                    fn, variants, k=k, what_if_k=what_if_k, method=method, dense_max=dense_max, tol=tol,
                    trace=trace, probes=probes, trace_rtol=trace_rtol, seed=seed, chunk=chunk, progress=progress,
                    density=density, budget=budget_, jvp=jvp)
            except NormfieldError:
                raise
            except Exception as e:  # noqa: BLE001
                if is_oom(e):
                    raise NormfieldError(
                        f"inputs: the Jacobian products on a batch of {T} do not fit in memory; pass a smaller "
                        "batch, dtype='float32', method='lanczos' or a smaller chunk", argument="inputs") from None
                raise
    settings = {"samples": T, "outputs": int(out.shape[1]), "dtype": str(dt).replace("torch.", ""),
                "device": str(dev), "mode": mode, "method": method, "k": k,
                "what_if_k": what_if_k if variants else None,
                "tol": default_tol(dt) if tol is None else tol, "seed": seed,
                "parameters_selected": len(names), "what_if": variants,
                "trace_rtol": trace_rtol, "budget": None if budget_ is None else budget_.to_dict(),
                "products": (fisher_res.products + sum(v.products for v in what.values())) if fisher_res else 0}
    return AnalysisResult(fisher=fisher_res, layers=layers_df, grams=grams, what_if=what, settings=settings)
