import pytest
import torch

from models import get_model, list_models, register_model

DIMS = {"a": 12, "t": 16, "v": 8}


def batch(B=3, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, 1:] = False
    feats = {m: torch.randn(B, T, d, generator=g) for m, d in DIMS.items()}
    present = {m: mask.clone() for m in DIMS}
    present["v"][0, 2] = False
    speaker = torch.randint(0, 2, (B, T), generator=g)
    label = torch.randint(0, 7, (B, T), generator=g).masked_fill(~mask, -100)
    return feats, present, mask, speaker, label


def test_registry():
    assert {"concat_mlp", "dialogue_gru"} <= set(list_models())
    with pytest.raises(ValueError, match="already registered"):
        register_model("concat_mlp")(torch.nn.Module)
    with pytest.raises(KeyError, match="unknown model"):
        get_model("nope")


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name):
    torch.manual_seed(0)
    model = get_model(name, input_dims=DIMS, n_classes=7)
    feats, present, mask, speaker, label = batch()
    logits = model(feats, present, mask, speaker)
    assert logits.shape == (3, 5, 7)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), label.reshape(-1), ignore_index=-100)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", list_models())
def test_padding_does_not_change_real_outputs(name):
    torch.manual_seed(0)
    model = get_model(name, input_dims=DIMS, n_classes=7).eval()
    feats, present, mask, speaker, _ = batch()
    out = model(feats, present, mask, speaker)
    feats2 = {m: f.masked_fill(~mask.unsqueeze(-1), 123.0) for m, f in feats.items()}  # garbage in padding
    out2 = model(feats2, present, mask, speaker)
    torch.testing.assert_close(out[mask], out2[mask])


@pytest.mark.parametrize("name", list_models())
def test_absent_modality_is_ignored(name):
    torch.manual_seed(0)
    model = get_model(name, input_dims=DIMS, n_classes=7).eval()
    feats, present, mask, speaker, _ = batch()
    out = model(feats, present, mask, speaker)
    feats["v"][0, 2] = 99.0  # marked absent: its values must not matter
    torch.testing.assert_close(out, model(feats, present, mask, speaker))
