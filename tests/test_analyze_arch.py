"""The Fisher/NTK dual of every standard architecture, exactly, against a brute-force Jacobian.

Each model's F* = J Jᵀ/T from ``nf.analyze``'s products (whole batch, train mode) is compared
with J Jᵀ/T from the whole-batch Jacobian by ``torch.autograd.functional.jacobian`` (reverse mode
row by row, an independent route), float64, to 1e-10 relative to max|F*|: entries are sums of
O(P) products of O(1) terms, so round-off is ~P·eps ≈ 1e-13. Routes (forward mode, math
kernels, double VJP) are compared with each other to the same tolerance.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import normfield as nf
from normfield.analyze._functional import ModelFunction, model_state_guard, pick_output, select_parameters
from normfield.analyze.ntk import fisher_ntk
from normfield.core.jacobian import math_kernels
from normfield.errors import NormfieldError

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Head(nn.Module):
    """body -> (optional pooling of a sequence) -> linear head."""

    def __init__(self, body: nn.Module, d: int, c: int = 2, pool: str = "none") -> None:
        super().__init__()
        self.body, self.head, self.pool = body, nn.Linear(d, c), pool

    def forward(self, x):
        h = pick_output(self.body(x))
        if self.pool == "mean":
            h = h.mean(1)
        elif self.pool == "last":
            h = h[:, -1]
        return self.head(h.flatten(1))


class MHA(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(d, 2, batch_first=True)

    def forward(self, x):
        return self.att(x, x, x, need_weights=False)


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ViT(nn.Module):
    """Patches (conv, stride = patch) + class token + positions -> pre-norm encoder -> norm -> head."""

    def __init__(self, d: int = 8, patch: int = 2, side: int = 4, c: int = 3) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, d, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, (side // patch) ** 2 + 1, d) * 0.5)
        layer = nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, c)

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], 1) + self.pos
        return self.head(self.norm(self.enc(h))[:, 0])


class TiedLM(nn.Module):
    """Token embedding whose weight is also the output projection (tied weights)."""

    def __init__(self, vocab: int = 7, d: int = 4) -> None:
        super().__init__()
        self.emb, self.mix = nn.Embedding(vocab, d), nn.Linear(d, d)
        self.out = nn.Linear(d, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tok):
        return self.out(torch.tanh(self.mix(self.emb(tok).mean(1))))


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    hidden: torch.Tensor


class Structured(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.lin, self.head = kind, nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        y = self.head(h)
        return {"tuple": (y, h), "dict": {"logits": y, "hidden": h}, "dataclass": Out(y, h)}[self.kind]


def _rnn(cls):
    return Head(cls(3, 4, batch_first=True), 4, pool="last")


def _tel(norm_first):
    return Head(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=norm_first), 8,
                pool="mean")


def _encoder():
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=True)
    return Head(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), 8, pool="mean")


CASES = {
    "mlp": (lambda: nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)), (4,), 5),
    "bn1d": (lambda: nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Flatten(),
                                   nn.Linear(3 * 3, 2)), (2, 5), 4),
    "bn2d": (lambda: nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                                   nn.Linear(3 * 9, 2)), (1, 3, 3), 4),
    "bn3d": (lambda: nn.Sequential(nn.Conv3d(1, 2, 2), nn.BatchNorm3d(2), nn.ReLU(), nn.Flatten(),
                                   nn.Linear(2 * 8, 2)), (1, 3, 3, 3), 4),
    "resnet-block": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
                                           Residual(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)),
                     (1, 4, 4), 4),
    "groupnorm-instancenorm": (lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(),
                                                     nn.InstanceNorm2d(4, affine=True), nn.Flatten(),
                                                     nn.Linear(4 * 4, 2)), (1, 4, 4), 3),
    "layernorm-rmsnorm": (lambda: nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 5),
                                                nn.RMSNorm(5), nn.Linear(5, 2)), (4,), 4),
    "embedding": (lambda: nn.Sequential(nn.Embedding(9, 4), nn.Flatten(), nn.Linear(4 * 3, 2)), "tokens", 4),
    "multihead-attention": (lambda: Head(MHA(), 8, pool="mean"), (3, 8), 3),
    "transformer-post-norm": (lambda: _tel(False), (3, 8), 3),
    "transformer-pre-norm": (lambda: _tel(True), (3, 8), 3),
    "transformer-encoder": (_encoder, (3, 8), 3),
    "vit": (ViT, (1, 4, 4), 3),
    "lstm": (lambda: _rnn(nn.LSTM), (3, 3), 4),
    "gru": (lambda: _rnn(nn.GRU), (3, 3), 4),
    "tied-weights": (TiedLM, "tokens", 3),
    "tuple-output": (lambda: Structured("tuple"), (3,), 4),
    "dict-output": (lambda: Structured("dict"), (3,), 4),
    "dataclass-output": (lambda: Structured("dataclass"), (3,), 4),
}


def _make(name, seed=0):
    build, shape, T = CASES[name]
    torch.manual_seed(seed)
    model = build().to(DT).train()
    with torch.no_grad():  # non-trivial affine parameters so every parameter matters
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)):
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.3)
    g = torch.Generator().manual_seed(seed + 1)
    if shape == "tokens":
        vocab = next(m for m in model.modules() if isinstance(m, nn.Embedding)).num_embeddings
        x = torch.randint(0, vocab, (T, 3), generator=g)
    else:
        x = torch.randn(T, *shape, generator=g, dtype=DT)
    return model, x


def _brute_dual(model, x, names):
    """J Jᵀ/T from the whole-batch Jacobian (reverse mode, one row at a time) on a copy of the model."""
    m = copy.deepcopy(model)
    params = dict(m.named_parameters())
    shapes = [(n, params[n].shape, params[n].numel()) for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(v):
        d, i = {}, 0
        for n, s, k in shapes:
            d[n] = v[i:i + k].reshape(s)
            i += k
        out = pick_output(torch.func.functional_call(m, d, (x,)))
        return out.reshape(-1)

    with model_state_guard(m):
        J = torch.autograd.functional.jacobian(f, flat)
    return (J @ J.T / x.shape[0]).numpy()


def _dual(model, x, jvp="auto", parameters=None):
    with model_state_guard(model):
        names = select_parameters(model, parameters)
        fn = ModelFunction.build(model, x, names, dtype=DT, device=torch.device("cpu"))
        res = fisher_ntk(fn, method="dense", keep_dual=True, jvp=jvp)
    return res, names


@pytest.mark.parametrize("name", list(CASES))
def test_dual_matches_brute_force(name):
    model, x = _make(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res, names = _dual(model, x)
    ref = _brute_dual(model, x, names)
    assert res.dual.shape == ref.shape
    assert np.max(np.abs(res.dual - ref)) <= 1e-10 * np.max(np.abs(ref))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # running stats untouched
    if name.startswith(("transformer", "vit")):
        assert res.route in ("forward-math", "linearize-math")  # fused attention: no forward-mode rule on CPU


@pytest.mark.parametrize("name,other", [("lstm", "double-vjp"), ("gru", "double-vjp"), ("bn2d", "double-vjp"),
                                        ("transformer-pre-norm", "double-vjp-math"), ("vit", "double-vjp-math"),
                                        ("bn2d", "linearize"), ("vit", "linearize-math"),
                                        ("embedding", "linearize"), ("tuple-output", "linearize"),
                                        ("transformer-post-norm", "linearize-math"), ("bn3d", "linearize"),
                                        ("layernorm-rmsnorm", "linearize"), ("tied-weights", "linearize")])
def test_product_routes_agree(name, other):
    model, x = _make(name)
    a, _ = _dual(model, x)
    b, _ = _dual(model, x, jvp=other)
    assert b.route == other
    assert np.max(np.abs(a.dual - b.dual)) <= 1e-12 * np.max(np.abs(a.dual))


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_a_wrong_trace_is_refused_by_name_and_avoided_by_auto(name, monkeypatch):
    """torch.func.linearize traces nn.LSTM/nn.GRU into a product that is right once and then off by
    percents (their flattened weights are rebuilt in place): jvp='linearize' refuses it, and the auto
    route (size gate lifted, so it tries the trace) stays on forward mode through a long Lanczos run,
    matching the brute-force dual."""
    import normfield.core.jacobian as jac

    monkeypatch.setattr(jac, "TRACE_MIN_FLOPS", {"cpu": 0.0})
    monkeypatch.setattr(jac, "TRACE_OP_FLOPS", {"cpu": 0.0})
    model, x = _make(name)
    with pytest.raises(NormfieldError, match="traced product differs"):
        _dual(model, x, jvp="linearize")
    res = nf.analyze(model, x, method="lanczos", k=3, layers="none", tol=1e-10, trace="exact")
    assert res.fisher.route == "forward" and res.fisher.products > 10
    with model_state_guard(model):
        names = select_parameters(model, None)
    ref = np.linalg.eigvalsh(_brute_dual(model, x, names))[::-1]
    assert np.allclose(res.eigenvalues, ref[:3], rtol=1e-8, atol=0)


def test_math_kernel_gives_the_fused_kernel_numbers():
    """The output and its reverse-mode Jacobian are the same with the fused and the math attention."""
    model, x = _make("transformer-post-norm")
    with model_state_guard(model):
        with torch.no_grad():
            y_fused = model(x)
            with math_kernels():
                y_math = model(x)
    assert torch.allclose(y_fused, y_math, rtol=0, atol=1e-12 * float(y_fused.abs().max()))


@pytest.mark.parametrize("traced", [False, True])
def test_transformer_lanczos_and_what_if_match_dense(traced, monkeypatch):
    """Lanczos on the forward-mode product (a model this small is never traced) and, with the size
    gate and the per-op cost lifted, on the traced product after TRACE_AFTER JVPs: both match the dense dual."""
    import normfield.core.jacobian as jac

    if traced:
        monkeypatch.setattr(jac, "TRACE_MIN_FLOPS", {"cpu": 0.0})
        monkeypatch.setattr(jac, "TRACE_OP_FLOPS", {"cpu": 0.0})
    model, x = _make("vit")
    d = nf.analyze(model, x, method="dense", layers="none", what_if="last-mean", k=3, jvp="forward-math")
    lz = nf.analyze(model, x, method="lanczos", layers="none", what_if="last-mean", k=3, trace="exact")
    assert np.allclose(lz.eigenvalues, d.eigenvalues, rtol=1e-7, atol=0)
    assert lz.what_if["last-mean"].lambda_max == pytest.approx(d.what_if["last-mean"].lambda_max, rel=1e-7)
    assert lz.what_if["last-mean"].trace == pytest.approx(d.what_if["last-mean"].trace, rel=1e-10)
    assert lz.fisher.route == ("linearize-math" if traced else "forward-math")


def test_frozen_parameters_and_subsets():
    model, x = _make("resnet-block")
    model[0].weight.requires_grad_(False)
    res, names = _dual(model, x)
    assert "0.weight" not in names
    ref = _brute_dual(model, x, names)
    assert np.max(np.abs(res.dual - ref)) <= 1e-10 * np.max(np.abs(ref))
    res2, names2 = _dual(model, x, parameters=["3.*"])
    assert all(n.startswith("3.") for n in names2)
    ref2 = _brute_dual(model, x, names2)
    assert np.max(np.abs(res2.dual - ref2)) <= 1e-10 * np.max(np.abs(ref2))


def test_dropout_in_training_mode_is_refused():
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
    model = Head(layer, 8, pool="mean").to(DT)
    with pytest.raises(NormfieldError, match="dropout in training mode"):
        nf.analyze(model, torch.randn(3, 3, 8, dtype=DT))
    assert nf.analyze(model, torch.randn(3, 3, 8, dtype=DT), mode="eval", layers="none").lambda_max > 0


class _NoRules(torch.autograd.Function):
    """x³ with a first derivative only: no forward-mode rule, no double backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x ** 2 * g


class Opaque(nn.Module):
    def forward(self, x):
        return _NoRules.apply(x)


def test_unsupported_layer_names_the_module():
    model = nn.Sequential(nn.Linear(3, 4), Opaque(), nn.Linear(4, 2)).to(DT)
    with pytest.raises(NormfieldError, match=r"sub-module '1'.*parameters=\[") as e:
        nf.analyze(model, torch.randn(4, 3, dtype=DT), layers="none")
    assert e.value.__cause__ is None or isinstance(e.value.__cause__, Exception)
    with pytest.raises(NormfieldError, match="no route of forward works"):
        nf.analyze(model, torch.randn(4, 3, dtype=DT), layers="none", jvp="forward")
    # excluding the parameters upstream of the opaque layer is the documented way out
    assert nf.analyze(model, torch.randn(4, 3, dtype=DT), layers="none", parameters="2.*").lambda_max > 0


@pytest.mark.parametrize("traced", [False, True])
def test_generic_gram_matvec_on_a_plain_function(traced, monkeypatch):
    """gram_matvec works on any θ-dict function (no nn.Module), with the double-VJP route too, and
    with the traced product once the size gate is lifted (n = 10 > TRACE_AFTER products)."""
    import normfield.core.jacobian as jac
    from normfield.core.jacobian import gram_matvec

    if traced:
        monkeypatch.setattr(jac, "TRACE_MIN_FLOPS", {"cpu": 0.0})
        monkeypatch.setattr(jac, "TRACE_OP_FLOPS", {"cpu": 0.0})

    g = torch.Generator().manual_seed(0)
    X = torch.randn(5, 3, generator=g, dtype=DT)
    theta = {"W": torch.randn(4, 3, generator=g, dtype=DT), "v": torch.randn(2, 4, generator=g, dtype=DT)}

    def f(p):
        return (torch.tanh(X @ p["W"].T) @ p["v"].T).reshape(-1)

    J = torch.autograd.functional.jacobian(lambda W, v: f({"W": W, "v": v}), (theta["W"], theta["v"]))
    J = torch.cat([j.reshape(10, -1) for j in J], 1)
    ref = J @ J.T / 5
    for route in ("auto", "double-vjp"):
        n, mv, op = gram_matvec(f, theta, scale=1 / 5, route=route)
        F = torch.stack([mv(e) for e in torch.eye(n, dtype=DT)], 1)
        assert n == 10 and torch.allclose(F, ref, rtol=0, atol=1e-12 * float(ref.abs().max()))
        auto = "linearize" if traced else "forward"
        assert op.route == (auto if route == "auto" else route) and op.products >= 2 * n


def test_trace_waits_longer_for_many_small_ops(monkeypatch):
    """The rent-or-buy estimate of a trace: TRACE_AFTER JVPs plus ops·TRACE_OP_FLOPS/flops, with the
    ops counted by a dispatch mode (checked against the nodes of an independent make_fx trace of the
    same JVP, and the flops against its matrix products). Two functions with the same flops: the one
    with 40 more elementwise ops is estimated dearer and, after the same number of JVPs, is still on
    forward mode while the other has switched to the trace."""
    import normfield.core.jacobian as jac
    from torch.fx.experimental.proxy_tensor import make_fx

    monkeypatch.setattr(jac, "TRACE_MIN_FLOPS", {"cpu": 0.0})
    monkeypatch.setattr(jac, "TRACE_OP_FLOPS", {"cpu": 2e5})  # a small model: 8 ops cost one JVP
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 64, generator=g, dtype=DT)
    theta = {"W": torch.randn(64, 64, generator=g, dtype=DT) / 8}

    def lean(p):
        return torch.tanh(X @ p["W"]).reshape(-1)

    def busy(p):
        h = X @ p["W"]
        for _ in range(20):
            h = torch.tanh(h) * 0.9
        return h.reshape(-1)

    ops = {}
    for name, f in (("lean", lean), ("busy", busy)):
        op = jac.JacobianOperator(f, theta)
        op.jvp({"W": torch.ones_like(theta["W"])})
        graph = make_fx(lambda t: torch.func.jvp(f, (theta,), (t,))[1])({"W": torch.ones_like(theta["W"])})
        calls = [nd for nd in graph.graph.nodes if nd.op == "call_function"]
        assert op._jvp_ops == len(calls)
        # the flops: 2·64³ per matrix product in the same trace
        assert op._jvp_flops == 2 * 64 ** 3 * sum(1 for nd in calls if "mm" in str(nd.target))
        ops[name] = op
    flops = ops["lean"]._jvp_flops
    for name, op in ops.items():
        assert op._jvp_flops == flops
        assert op.trace_cost_jvps() == pytest.approx(jac.TRACE_AFTER + op._jvp_ops * jac.TRACE_OP_FLOPS["cpu"] / flops)
    assert ops["busy"]._jvp_ops >= ops["lean"]._jvp_ops + 40
    n_jvps = int(ops["lean"].trace_cost_jvps()) + 2
    assert n_jvps < ops["busy"].trace_cost_jvps()
    for op in ops.values():
        for _ in range(n_jvps):
            op.jvp({"W": torch.ones_like(theta["W"])})
    assert ops["lean"].route == "linearize" and ops["busy"].route == "forward"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["vit", "lstm", "gru", "transformer-post-norm", "bn3d", "tied-weights"])
def test_cuda_matches_cpu_in_float32(name):
    """The same products on the GPU (cuDNN RNNs and fused attention fall back as on the CPU)."""
    model, x = _make(name)
    cpu = nf.analyze(model, x, method="dense", layers="none", dtype="float32")
    gpu = nf.analyze(model, x, method="dense", layers="none", dtype="float32", device="cuda")
    # float32 round-off (eps 6e-8) over sums of O(100) terms; TF32 is off during the analysis
    assert gpu.lambda_max == pytest.approx(cpu.lambda_max, rel=2e-6)
    assert np.allclose(gpu.fisher.spectrum, cpu.fisher.spectrum, rtol=0, atol=1e-5 * cpu.lambda_max)
    assert next(model.parameters()).device.type == "cpu"
