"""Toy inputs shared by the model tests: padded batches in the model contract and engine-format dialogues."""
from __future__ import annotations

import numpy as np
import pytest
import torch


def toy_batch(dims: dict[str, int], mods="tav", B=3, T=5, seed=0, short=1, speakers=True):
    """``feats, present, mask, speaker, label`` with padding: dialogue 1 has 3 turns, dialogue 2 has ``short``."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, short:] = False
    feats = {m: torch.randn(B, T, dims[m], generator=g) for m in mods}
    present = {m: mask.clone() for m in mods}
    speaker = torch.randint(0, 2, (B, T), generator=g) if speakers else torch.zeros(B, T, dtype=torch.long)
    label = torch.randint(0, 7, (B, T), generator=g).masked_fill(~mask, -100)
    return feats, present, mask, speaker, label


def toy_dialogues(dims: dict[str, int], n=6, seed=0, mods="tav", min_len=2, absent_v=True) -> list[dict]:
    """Synthetic dialogues in ``pipeline.training.dataset.dialogues``' format (an absent visual row if ``absent_v``)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        T = int(rng.integers(min_len, 6))
        present = {m: np.ones(T, bool) for m in mods}
        if absent_v and "v" in present:
            present["v"][0] = False
        out.append(dict(dialogue_id=f"d{k}", utterance_id=np.arange(T), label=rng.integers(0, 7, T),
                        speaker=rng.integers(0, 2, T),
                        feats={m: rng.standard_normal((T, dims[m])).astype(np.float32) * present[m][:, None]
                               for m in mods},
                        present=present))
    return out


def threads_for_tests() -> int:
    """Intra-op threads for the model tests: ``MERC_TEST_THREADS`` (default 1). Tiny tensors gain nothing from
    threads on a busy shared CPU; another count runs the same tolerances under other kernel splits."""
    import os

    value = os.environ.get("MERC_TEST_THREADS", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"MERC_TEST_THREADS must be a whole number >= 1, got {value!r}")
    return int(value)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """``threads_for_tests()`` intra-op threads (1 unless ``MERC_TEST_THREADS`` says otherwise) for the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(threads_for_tests())
    yield
    torch.set_num_threads(n)


def comparable(model, feats, present, mask, speaker) -> torch.Tensor:
    """What a padding test compares: the logits ``[B, T, C]`` — or, for a model fused by MCB (DialogueTRM Table 5
    "bilinear"), MCB's compact product ``[B, T, d]`` before its signed square root.

    Why: everything after that product (signed sqrt, L2 normalisation, the head) acts on each row alone, so padding
    can only reach the output through it; but the sqrt's slope is infinite at 0, and a product that is 0 in exact
    arithmetic (a sketch bin no index pair hashes to) comes out of float32 FFTs as ~1e-7 noise whose root is ~3e-4:
    the logits of two runs that differ only in rounding (other padding widths, other BLAS/FFT kernels) may differ
    by more than float32's tolerance, while the product stays within the FFT's error bound (``assert_same_rows``).
    """
    from models.dialoguetrm import MCB
    from pipeline.training.engine import split_output

    fuser = getattr(model, "fuser", None)
    if not isinstance(fuser, MCB):
        return split_output(model(feats, present, mask, speaker))[0]
    seen = []
    compact = fuser.compact
    fuser.compact = lambda xs, valid: seen.append(compact(xs, valid)) or seen[-1]
    try:
        model(feats, present, mask, speaker)
    finally:
        del fuser.compact  # the instance attribute: back to the method
    return seen[0]


def assert_same_rows(model, a: torch.Tensor, b: torch.Tensor) -> None:
    """Rows ``a`` ≈ ``b`` of ``comparable``: torch's float32 defaults for logits; for MCB's compact product, per row
    ‖a − b‖₂ ≤ (M + 1)·5·log2(d)·ε·‖a‖₂: the order of the forward error of M float32 FFTs and one inverse
    (each ≈ 3.3·log2(d)·ε normwise, radix 2: Higham, Accuracy and Stability of Numerical Algorithms, ch. 24),
    which also covers the few-ε differences of the encoders feeding it (measured ≤ 2ε·‖a‖₂, AVX2 and AVX-512
    kernels, 1 and 2 threads; 140ε for three modalities and d = 128). A leak moves rows by far more (a 1e-3 change
    of one input element: 2e-3 of the norm)."""
    import math

    from models.dialoguetrm import MCB

    fuser = getattr(model, "fuser", None)
    if not isinstance(fuser, MCB):
        torch.testing.assert_close(a, b)
        return
    M, d = fuser.h.shape[0], a.shape[-1]
    bound = (M + 1) * 5 * math.log2(d) * torch.finfo(torch.float32).eps
    a, b = a.detach(), b.detach()
    err, size = (a - b).norm(dim=-1), a.norm(dim=-1)
    worst = float((err / size.clamp(min=1e-30)).max())
    assert (err <= bound * size).all(), f"MCB product rows differ by {worst:.2e} of their norm (bound {bound:.2e})"


def overfit_ce(model, dims: dict[str, int], lr=1e-2) -> torch.Tensor:
    """``overfit`` with the plain cross-entropy of ``model``'s logits on one ``toy_batch``: the final loss."""
    feats, present, mask, speaker, label = toy_batch(dims)

    def step():
        logits = model(feats, present, mask, speaker)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), label.reshape(-1),
                                                 ignore_index=-100)
        return loss, loss.detach()

    return overfit(model, step, lr=lr)


def overfit(model, loss_fn, steps=150, lr=1e-2):
    """Adam on one batch: ``loss_fn()`` → (loss, extras); returns the last extras with the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss, extras = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return extras
