"""Real Hugging Face models (tiny configs, seeded, nothing downloaded) through nf.analyze and the tracker.

A BERT-style classifier called with keyword inputs (``input_ids``, ``attention_mask`` with
padding) and a GPT-2-style language model whose logits (T, S, V) give a cross-entropy over the
vocabulary at every position. The independent route: the explicit Jacobian of the logits by
torch.func.jacrev in float64, Λ = diag p − ppᵀ per prediction, its symmetric square root by an
eigendecomposition (not the factor the library uses), and the eigenvalues of the dual
Λ^{1/2} J Jᵀ Λ^{1/2} / (T·S) by LAPACK: the non-zero spectrum of the Gauss–Newton matrix
(1/(T·S)) Σ J_iᵀ Λ_i J_i.

Tolerance: analyze's Lanczos run stops when its top residual is <= tol·θ (tol = 1e-8 in float64),
so an eigenvalue lies within tol·λ_max (Kahan); it is λ_max once the run has found the top, which
the comparison checks: relative 2·tol.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import normfield as nf

transformers = pytest.importorskip("transformers")

TOL = 1e-8


def _bert():
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=3,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg).double().eval()


def _gpt2(vocab: int = 12):
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).double().eval()


def _tokens(T: int, L: int, vocab: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (T, L), generator=g)
    mask = torch.ones(T, L, dtype=torch.long)
    mask[0, -2:] = 0  # one padded sequence
    return {"input_ids": ids, "attention_mask": mask}


def _brute_force_lambda_max(model, inputs: dict[str, torch.Tensor]) -> float:
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    bufs = {n: b for n, b in model.named_buffers()}

    def logits(p):
        return torch.func.functional_call(model, {**p, **bufs}, (), dict(inputs)).logits

    z = logits(params)
    T, C = z.shape[0], z.shape[-1]
    N = z.numel() // C  # predictions: T·S
    jac = torch.func.jacrev(logits)(params)
    J = torch.cat([jac[n].reshape(N * C, -1) for n in params], 1).reshape(N, C, -1)
    p = torch.softmax(z.reshape(N, C), -1)
    w, V = torch.linalg.eigh(torch.diag_embed(p) - p[:, :, None] * p[:, None, :])
    root = V @ torch.diag_embed(w.clamp_min(0).sqrt()) @ V.transpose(1, 2)  # Λ^{1/2}, symmetric
    BJ = (root @ J).reshape(N * C, -1)
    return float(np.linalg.eigvalsh((BJ @ BJ.T / N).numpy())[-1])


def test_bert_classifier_with_dict_inputs():
    model = _bert()
    inputs = _tokens(4, 6, 40)
    res = nf.analyze(model, inputs, loss="cross-entropy", outputs="logits", dtype="float64", method="lanczos",
                     k=1, layers="none", trace="exact")
    assert res.curvature == "fisher-cross-entropy"
    assert res.lambda_max == pytest.approx(_brute_force_lambda_max(model, inputs), rel=2 * TOL)


def test_gpt2_language_model_over_its_vocabulary():
    model = _gpt2()
    inputs = _tokens(2, 6, 12)
    res = nf.analyze(model, inputs, loss="cross-entropy", outputs="logits", dtype="float64", method="lanczos",
                     k=1, layers="none", trace="exact")
    assert res.lambda_max == pytest.approx(_brute_force_lambda_max(model, inputs), rel=2 * TOL)


def test_tracker_follows_a_gpt2_model_through_training():
    model = _gpt2()
    inputs = _tokens(2, 6, 12)
    tracker = nf.SharpnessTracker(model, inputs, loss="cross-entropy", outputs="logits", dtype="float64", every=2,
                                  trace="none", layers="none")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(3):
        tracker.step(step, lr=0.5)
        if step == 2:
            break
        opt.zero_grad()
        out = model(**inputs, labels=inputs["input_ids"])
        out.loss.backward()
        opt.step()
    df = tracker.frame
    assert list(df["step"]) == [0, 2] and list(df["warm"]) == [False, True]
    assert df["lambda_max"].iloc[-1] == pytest.approx(_brute_force_lambda_max(model, inputs), rel=2 * TOL)
