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
    """Synthetic dialogues in ``pipeline.dataset.dialogues``' format (an absent visual row if ``absent_v``)."""
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


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads; on a busy shared CPU they only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
