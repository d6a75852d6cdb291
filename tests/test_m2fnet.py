"""Gao's M2FNet (the seed paper): utterance-level fusion, one-way GRU context, single FC; Table 5 ablations."""
import pytest
import torch

from modelkit import one_thread, overfit_ce, toy_batch  # noqa: F401  (one_thread: autouse)

from models import get_model

DIMS = {"t": 16, "a": 12, "v": 8}


def build(mods="tav", **cfg):
    torch.manual_seed(0)
    return get_model("m2fnet", input_dims={m: DIMS[m] for m in mods}, n_classes=7,
                     **{"hidden": 16, "dropout": 0.0, **cfg}).eval()


def perturb(feats, b, turns, seed=3):
    g = torch.Generator().manual_seed(seed)
    out = {m: f.clone() for m, f in feats.items()}
    for m in out:
        for t in turns:
            out[m][b, t] = torch.randn(out[m].shape[-1], generator=g)
    return out


def test_structure_is_the_papers():
    m = build()
    assert isinstance(m.fc, torch.nn.Linear)  # §3.5: a single fully connected layer
    assert not m.gru.bidirectional and m.gru.num_layers == 1  # §3.4 + Limitations: one-way GRU
    # §3.3: no per-modality dialogue encoder before fusion — the only transformer is the fusion one
    assert [n for n, _ in m.named_children()] == ["proj", "fuse", "speaker", "gru", "drop", "fc"]


def test_one_way_gru_never_sees_later_turns():
    m = build()
    feats, present, mask, speaker, _ = toy_batch(DIMS)
    out = m(feats, present, mask, speaker)
    out2 = m(perturb(feats, 0, [3, 4]), present, mask, speaker.clone().index_put_((torch.tensor([0]),
                                                                                  torch.tensor([4])),
                                                                                 torch.tensor([1])))
    torch.testing.assert_close(out2[0, :3], out[0, :3])
    assert (out2[0, 3] - out[0, 3]).abs().max() > 1e-4
    out3 = m(perturb(feats, 0, [0]), present, mask, speaker)
    assert (out3[0, 4] - out[0, 4]).abs().max() > 1e-4  # earlier turns do reach later ones through the GRU


@pytest.mark.parametrize("fusion", ["attention", "concat"])
def test_without_gru_no_dialogue_context_at_all(fusion):
    """Table 5 "w/o GRU Context": turn i's output is a function of turn i's own features only."""
    m = build(context="none", fusion=fusion)
    assert not hasattr(m, "gru") and m.speaker is None
    feats, present, mask, speaker, _ = toy_batch(DIMS)
    out = m(feats, present, mask, speaker)
    for i in range(5):
        others = [t for t in range(5) if t != i]
        out2 = m(perturb(feats, 0, others, seed=i), present, mask, torch.randint(0, 5, speaker.shape))
        torch.testing.assert_close(out2[0, i], out[0, i])
    # and the same utterance alone in a dialogue of one gives the same logits
    alone = m({k: f[:1, 2:3] for k, f in feats.items()}, {k: p[:1, 2:3] for k, p in present.items()},
              mask[:1, 2:3], speaker[:1, 2:3])
    torch.testing.assert_close(alone[0, 0], out[0, 2])


def test_fusion_is_self_attention_over_the_utterances_modalities():
    m = build()
    feats, present, mask, _, _ = toy_batch(DIMS)
    u = m.fused(feats, present, mask)
    # the fused vector of utterance (0, 1) mixes its three modalities, and nothing of other utterances
    for mod in "tav":
        f2 = {k: f.clone() for k, f in feats.items()}
        f2[mod][0, 1] = torch.randn(DIMS[mod], generator=torch.Generator().manual_seed(5))
        u2 = m.fused(f2, present, mask)
        assert (u2[0, 1] - u[0, 1]).abs().max() > 1e-4
        torch.testing.assert_close(u2[0, [0, 2, 3, 4]], u[0, [0, 2, 3, 4]])
    # hand computation for one utterance: mean over the transformer outputs of its three projected tokens
    z = m.proj(feats, present)
    tokens = torch.stack([z[k][0, 1] for k in "tav"]).unsqueeze(0)
    torch.testing.assert_close(u[0, 1], m.fuse(tokens).mean(1)[0])


def test_speaker_embedding_is_used_only_with_the_gru():
    feats, present, mask, speaker, _ = toy_batch(DIMS)
    other = speaker.clone()
    other[0, 0] = 1 - other[0, 0]
    m = build()
    assert (m(feats, present, mask, other)[0, 0] - m(feats, present, mask, speaker)[0, 0]).abs().max() > 1e-4
    m = build(speaker=False)
    torch.testing.assert_close(m(feats, present, mask, other), m(feats, present, mask, speaker))


def test_bad_switch_is_one_clear_error():
    with pytest.raises(ValueError, match="fusion is attention\\|concat"):
        build(fusion="bilinear")


@pytest.mark.parametrize("cfg", [{}, {"fusion": "concat"}, {"context": "none"}])
def test_overfits_tiny_batch(cfg):
    assert overfit_ce(build(**cfg).train(), DIMS).item() < 0.1
