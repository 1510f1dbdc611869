"""``nf.analyze``: the two papers' diagnostics for any PyTorch module at initialization."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from normfield.analyze._functional import ModelFunction, model_state_guard, select_parameters
from normfield.analyze.cost import ProductMeter
from normfield.analyze.data import Batch, as_batches, forward_errors, resolve_device, resolve_dtype, shape_text
from normfield.analyze.hooks import layer_gram_rows
from normfield.analyze.losses import LOSSES, is_hessian
from normfield.analyze.ntk import dual_spectra
from normfield.analyze.operator import CurvatureOperator, check_batches_for_mode, full_precision_float32
from normfield.analyze.pooled import parameter_spectrum, pooled_spectra
from normfield.analyze.result import AnalysisResult
from normfield.analyze.settings import Accuracy, resolve_accuracy
from normfield.analyze.spectrum import FisherSpectrum
from normfield.core.jacobian import ROUTES, is_oom
from normfield.core.validation import check_choice, check_finite_array, check_memory
from normfield.errors import NormfieldError

__all__ = ["analyze", "WHAT_IF"]

#: Supported ``what_if`` variants.
WHAT_IF = ("last-mean",)

# kept for callers of the former private helpers
_resolve_device, _resolve_dtype, _full_precision_float32 = resolve_device, resolve_dtype, full_precision_float32


def analyze(
    model: nn.Module,
    inputs: Any,
    *,
    outputs: Callable[[Any], torch.Tensor] | Sequence[int] | str | None = None,
    parameters: Sequence[str] | str | None = None,
    layers: Any = "auto",
    fisher: bool = True,
    k: int | None = None,
    method: str = "auto",
    what_if: str | Sequence[str] | None = None,
    what_if_k: int | None = None,
    mode: str = "as-is",
    dtype: Any = None,
    device: Any = None,
    tol: float | None = None,
    trace: str | None = None,
    probes: int | None = None,
    trace_rtol: float | None = None,
    budget: Any = None,
    jvp: str = "auto",
    dense_max: int | None = None,
    chunk: int | None = None,
    collapse_threshold: float = 0.9,
    density: bool = False,
    seed: int = 0,
    progress: bool = False,
    loss: str = "mse",
    targets: Any = None,
    accuracy: Accuracy | None = None,
    batch_inputs: Callable[[Any], Any] | None = None,
    max_batches: int | None = None,
    theory: bool | dict[str, Any] = False,
) -> AnalysisResult:
    """Normalization diagnostics of ``model`` on the batch (or data set) ``inputs``.

    Computes (i) for every hooked layer the batch Gram matrix of its output,
    its spectrum, conditioning, rank-collapse indicators and the distance to
    the batch-norm fixed point G* (Joudaki et al. 2023, eqs. (2), (10)); (ii)
    the curvature of the chosen ``loss`` with respect to the chosen parameters,
    each batch differentiated as a whole — by default the Fisher/NTK dual
    F* = J Jᵀ/T of the outputs (Karakida et al. 2019, eq. (8)): λ_max,
    m_λ = tr(F*)/P (eq. (10)), the top-k eigenvalues and the learning-rate
    bound 2/λ_max (eq. (23)); (iii) optionally the same with last-layer mean
    subtraction f̄ = f − E_batch[f] (eq. (15), Thm 3.3) added after the model.

    Which curvature (``res.curvature``, :mod:`normfield.analyze.losses`):
    ``loss="mse"`` → ``"fisher-mse"``, F = JᵀJ/T; ``loss="cross-entropy"`` →
    ``"fisher-cross-entropy"``, F = Σ_t J_tᵀ(diag p_t − p_t p_tᵀ)J_t/(T·S), the
    Fisher of the categorical likelihood = the GGN of the mean softmax
    cross-entropy over the last axis of the output (S positions: the axes
    between batch and classes, e.g. a language model's sequence; no labels);
    ``loss="hessian"`` with ``targets=`` → the Hessian of the mean cross-entropy
    (integer targets) or of Σ_t ‖f_t − y_t‖²/(2T) (float targets), with its
    smallest eigenvalue ``res.lambda_min``.

    Inputs (:mod:`normfield.analyze.data`): a tensor or NumPy array is one batch
    (``model(x)``); a tuple is the positional arguments of one batch
    (``model(*inputs)``); a dict its keyword arguments (``model(**inputs)``,
    e.g. ``input_ids`` and ``attention_mask``; integer tensors are not cast);
    the batch size is the leading dimension of every tensor. A list, a
    ``DataLoader`` or any other iterable is a data set of such batches, where a
    2-element tuple/list whose second element is a 1-D tensor of the batch size
    is an ``(inputs, targets)`` pair (or pass ``batch_inputs=``). A data set
    gives the pooled curvature F = Σ_b (T_b/N) F_b in parameter space (one JVP
    and one VJP per batch per product; train-mode batch norm couples the samples
    of each batch, as in training), ``res.samples`` = N, ``res.batches`` and
    ``res.per_batch``: each batch's own λ_max and trace (mean ± 95 % interval:
    :meth:`AnalysisResult.per_batch_spread`); the layer Grams are those of the
    first batch. One batch keeps the dual (T·C) route.

    The model is given back exactly as it came: parameters, buffers (batch-norm
    running statistics, ``num_batches_tracked``), train/eval flags and
    ``.grad`` are untouched.

    Args:
        model: any ``nn.Module``; called as ``model(*args, **kwargs)`` on each batch.
        inputs: one batch (tensor/array of shape (T, ...), tuple, dict) or a data set of batches (see above).
        outputs: ``None`` (the model's output, reshaped to (T, C) — for cross-entropy its last axis
            holds the classes; of a tuple
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
            (matrix-free) or ``"auto"`` (dense when T·C <= ``dense_max``). A Hessian is dense
            (P HVPs, every eigenvalue) when asked or when P <= ``dense_max``; a data set's pooled
            curvature is dense only when asked.
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
        progress: show a progress bar in Jacobian products (over every batch of a data set).
        loss: ``"mse"`` (default), ``"cross-entropy"``, ``"hessian"`` (or ``"hessian-mse"``,
            ``"hessian-cross-entropy"``): which curvature (see above).
        targets: labels or regression targets of one batch (shape (T, ...)), or for a data set a
            callable batch -> targets; only ``loss="hessian*"`` uses them.
        accuracy: :class:`normfield.analyze.Accuracy` gathering ``tol, trace, probes, trace_rtol,
            budget, k, what_if_k, dense_max, chunk``; a keyword given here overrides its field.
        batch_inputs: callable mapping each batch of a data set (or the one batch) to the model's
            arguments (a tensor, a tuple or a dict).
        max_batches: use at most this many batches of a data set.
        theory: put the infinite-width prediction (:func:`normfield.infinite.predict.predict`)
            beside every measured number that has one — λ_max, m_λ, the trace and each layer's
            Gram: ``res.theory`` (measured, predicted, ratio) and ``res.prediction``; a dict is
            passed to the prediction (``init``, ``tol``, ``seed``). One batch only.

    Returns:
        :class:`normfield.analyze.AnalysisResult`.

    Raises:
        NormfieldError: bad arguments; a model output that is not a tensor;
            a batch of one sample under train-mode batch norm (naming the batch);
            dropout in training mode; no parameter requiring grad; a batch too large
            for memory; a forward pass that fails on ``inputs``; an empty data set;
            batches whose shapes disagree beyond the batch dimension; tensors of
            one batch with different batch sizes; cross-entropy on a one-column
            output; ``loss="hessian"`` without targets.

    Example:
        >>> import torch, normfield as nf
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.BatchNorm1d(32),
        ...                           torch.nn.ReLU(), torch.nn.Linear(32, 2)).double()
        >>> res = nf.analyze(net, torch.randn(16, 8, dtype=torch.float64), what_if="last-mean")
        >>> res.lambda_max > res.what_if["last-mean"].lambda_max
        True
    """
    acc = resolve_accuracy(accuracy, tol=tol, trace=trace, probes=probes, trace_rtol=trace_rtol, budget=budget, k=k,
                           what_if_k=what_if_k, dense_max=dense_max, chunk=chunk)
    variants = _check_arguments(model, mode=mode, method=method, jvp=jvp, what_if=what_if, loss=loss)
    if theory and not isinstance(inputs, (torch.Tensor, np.ndarray)):
        raise NormfieldError(
            f"theory: the infinite-width prediction takes one batch, a tensor or array of shape (T, d); got "
            f"{type(inputs).__name__} (analyze a data set without theory=True, or pass one batch)",
            argument="theory")
    dev, dt = resolve_device(device, model), resolve_dtype(dtype, model)
    batches, single = as_batches(inputs, dtype=dt, device=dev, batch_inputs=batch_inputs, targets=targets,
                                 max_batches=max_batches)
    if variants and (not single or is_hessian(loss)):
        raise NormfieldError("what_if: the last-mean variant is computed on one batch of a Fisher; pass one batch "
                             "(not a data set) and loss='mse' or 'cross-entropy'", argument="what_if")
    with model_state_guard(model, mode), full_precision_float32():
        check_batches_for_mode(model, batches, single)
        if "last-mean" in variants and batches[0].size < 2:
            raise NormfieldError("inputs: what_if='last-mean' subtracts the batch mean and needs >= 2 samples",
                                 argument="inputs")
        names = select_parameters(model, parameters) if fisher else [n for n, _ in model.named_parameters()]
        fn = ModelFunction.build(model, batches[0].args, names, dtype=dt, device=dev, outputs=outputs,
                                 kwargs=batches[0].kwargs)
        layers_df, grams, out, act_bytes = _first_forward(model, fn, batches[0], single, layers, collapse_threshold)
        fisher_res, what, per_batch, cop = None, {}, None, None
        if fisher:
            # the vjp keeps the forward's activations; vmapped dense products keep `chunk` copies
            T0 = batches[0].size
            check_memory("inputs", 3 * act_bytes,
                         hint=f"the graph of a forward pass on {T0} samples is too large; pass a smaller batch "
                              "(inputs[:n]) or dtype='float32'")
            if len(batches) > 1:  # every batch keeps its forward graph for the products
                check_memory("inputs", (len(batches) + 2) * act_bytes,
                             hint=f"the forward graphs of {len(batches)} batches are kept for the products; "
                                  "pass fewer batches (max_batches=n) or dtype='float32'")
            try:
                cop = CurvatureOperator.from_batches(model, batches, names, loss=loss, dtype=dt, device=dev,
                                                     outputs=outputs, mode=mode, jvp=jvp, single=single)
                fisher_res, what, per_batch = _curvature(cop, variants, acc, method=method, seed=seed,
                                                         density=density, progress=progress)
            except NormfieldError:
                raise
            except Exception as e:  # noqa: BLE001
                if is_oom(e):
                    raise NormfieldError(
                        f"inputs: the Jacobian products on a batch of {T0} do not fit in memory; pass a smaller "
                        "batch, dtype='float32', method='lanczos' or a smaller chunk", argument="inputs") from None
                raise
    settings = _settings(batches, out, dt, dev, mode=mode, method=method, acc=acc, seed=seed, names=names,
                         variants=variants, loss=loss, cop=cop, fisher_res=fisher_res, what=what,
                         per_batch=per_batch)
    res = AnalysisResult(fisher=fisher_res, layers=layers_df, grams=grams, what_if=what, settings=settings,
                         per_batch=per_batch)
    if theory:
        from normfield.analyze.theory import attach_theory  # the infinite-width prediction beside the measurement

        attach_theory(res, model, inputs, **(theory if isinstance(theory, dict) else {}))
    return res


def _check_arguments(model: Any, *, mode: str, method: str, jvp: str, what_if: Any, loss: str) -> list[str]:
    """Validate the choices; return the ``what_if`` variants as a list."""
    if not isinstance(model, nn.Module):
        raise NormfieldError(f"model must be a torch.nn.Module, got {type(model).__name__}", argument="model")
    check_choice("mode", mode, ["as-is", "train", "eval"])
    check_choice("method", method, ["auto", "dense", "lanczos"])
    check_choice("jvp", jvp, ["auto", *ROUTES])
    check_choice("loss", loss, LOSSES)
    variants = [] if what_if is None else ([what_if] if isinstance(what_if, str) else list(what_if))
    for v in variants:
        check_choice("what_if", v, WHAT_IF)
    return variants


def _first_forward(model: nn.Module, fn: ModelFunction, batch: Batch, single: bool, layers: Any,
                   collapse_threshold: float) -> tuple[pd.DataFrame, dict[str, np.ndarray], torch.Tensor, int]:
    """One guarded forward on the first batch: the per-layer Grams, the output checks and the bytes of
    the activations (for the memory check of the products)."""
    act_bytes = [0]
    handles = []

    def count(mod, inp, out):
        if isinstance(out, torch.Tensor):
            act_bytes[0] += out.numel() * out.element_size()

    holder: list[torch.Tensor] = []
    try:
        with forward_errors(batch.where(single), shape_text(batch), batch.size):
            for m in model.modules():
                if not list(m.children()):
                    handles.append(m.register_forward_hook(count))
            layers_df, grams = layer_gram_rows(model, lambda: holder.append(fn.raw(fn.theta)), layers,
                                               collapse_threshold=collapse_threshold)
    finally:
        for h in handles:
            h.remove()
    out = holder[0]
    if not out.is_floating_point():
        raise NormfieldError(f"model output must be a floating-point tensor, got {out.dtype}", argument="outputs")
    check_finite_array("model output", out)
    return layers_df, grams, out, act_bytes[0]


def _curvature(cop: CurvatureOperator, variants: list[str], acc: Accuracy, *, method: str, seed: int,
               density: bool, progress: bool) -> tuple[FisherSpectrum, dict[str, FisherSpectrum], pd.DataFrame]:
    """The main spectrum, the variants' and the per-batch rows, on one product meter (one budget)."""
    meter = ProductMeter(acc.budget, progress=progress,
                         desc="Jacobian products" + (f" ({cop.batches} batches)" if cop.batches > 1 else ""))
    meter.bind(cop)
    try:
        what: dict[str, FisherSpectrum] = {}
        if cop.batches > 1:
            main, frame = pooled_spectra(cop, acc, method=method, seed=seed, meter=meter, density=density)
            return main, what, frame
        if cop.space == "parameter":  # a Hessian
            main = parameter_spectrum(cop, acc, seed=seed, meter=meter, density=density, method=method)
        else:
            shared = variants if cop.curvature == "fisher-mse" else []
            main, what = _dual(cop, shared, acc, method, seed, density, meter)
            for v in variants:
                if v not in what:  # a cross-entropy Fisher: the centred model's softmax is its own operator
                    vcop = cop.with_center(True)
                    meter.bind(vcop)
                    w, _ = _dual(vcop, [], acc, method, seed, density, meter, k=acc.what_if_k)
                    w.note = "its own operator (the centred model's softmax): products not shared"
                    what[v] = w
    finally:
        meter.close()
    frame = pd.DataFrame({"batch": [0], "samples": [cop.samples], "lambda_max": [main.lambda_max],
                          "trace": [main.trace], "trace_stderr": [main.trace_stderr], "products": [main.products]})
    return main, what, frame


def _dual(cop, variants, acc, method, seed, density, meter, k=None):
    return dual_spectra(cop, variants, k=acc.k if k is None else k, what_if_k=acc.what_if_k, method=method,
                        dense_max=acc.dense_max, tol=acc.tol, trace=acc.trace, probes=acc.probes,
                        trace_rtol=acc.trace_rtol, seed=seed, chunk=acc.chunk, density=density, meter=meter)


def _settings(batches, out, dt, dev, *, mode, method, acc, seed, names, variants, loss, cop, fisher_res, what,
              per_batch) -> dict[str, Any]:
    """How the analysis ran (the JSON ``settings``)."""
    products = 0
    if fisher_res is not None:  # every row's products, once
        products = fisher_res.products + sum(w.products for w in what.values())
        if len(batches) > 1:
            products += int(per_batch["products"].sum())
    return {"samples": int(sum(b.size for b in batches)), "outputs": int(out.shape[1]),
            "dtype": str(dt).replace("torch.", ""), "device": str(dev), "mode": mode, "method": method, "k": acc.k,
            "what_if_k": acc.what_if_k if variants else None, "tol": acc.tol_for(dt), "seed": seed,
            "parameters_selected": len(names), "what_if": variants, "trace_rtol": acc.trace_rtol,
            "budget": None if acc.budget is None else acc.budget.to_dict(), "products": products,
            "loss": loss, "curvature": cop.curvature if cop is not None else None, "batches": len(batches),
            "batch_sizes": [b.size for b in batches]}
