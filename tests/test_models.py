"""Every registered model (and each paper ablation) on every modality subset: shapes, gradients, masks,
overfitting a tiny batch, determinism through the shared engine, and the engine's hooks."""
import pytest
import torch

from modelkit import assert_same_rows, comparable, one_thread, overfit, toy_batch, toy_dialogues  # noqa: F401

from models import get_model, list_models, model_class, register_model
from pipeline.training.engine import Engine, EngineConfig, parse_modalities, split_output

DIMS = {"t": 16, "a": 12, "v": 8}
SUBSETS = ["t", "a", "v", "ta", "tv", "av", "tav"]
TINY = {"hidden": 16}
# per model: widths that only cost time here (SUMMER's DialogueRNN over the visual sequence is 256-d by default)
TINY_MODEL = {"summer": {"dialoguernn_dim": 16}}
# Paper ablations by param (M2FNet Table 5, DialogueTRM Tables 3–5), on top of each model's defaults.
ABLATIONS = {
    "m2fnet": [{"fusion": "concat"}, {"context": "none"}, {"fusion": "concat", "context": "none"},
               {"speaker": False}],
    "dialoguetrm": [{"context": {"t": "free"}}, {"context": {"a": "dependent", "v": "dependent"}},
                    {"causal": False}, {"window": None}, {"intra_transformer": False}, {"gates": False},
                    {"rep_transformer": False}, {"gates": False, "rep_transformer": False},
                    {"gate_weights": "modality"}, {"slot_embeddings": True}, {"fusion": "add"},
                    {"fusion": "concat"}, {"fusion": "max"}, {"fusion": "bilinear"}, {"fusion": "gmu"},
                    {"fusion": "mult"}],
    "ada2i": [{"afw": False}, {"amw": False}, {"modulation": False}, {"afw": False, "amw": False},
              {"feature_target": "output"}, {"encoder_dim": {"a": 8}}],
}
VARIANTS = [(n, {}) for n in list_models()] + [(n, c) for n, cs in ABLATIONS.items() for c in cs]
VARIANT_IDS = [n + "".join(f"-{k}={v}" for k, v in c.items()) for n, c in VARIANTS]


def batch(mods="tav", B=3, T=5, seed=0):
    return toy_batch(DIMS, mods, B, T, seed)


def build(name, cfg, mods, **extra):
    torch.manual_seed(0)
    return get_model(name, input_dims={m: DIMS[m] for m in mods}, n_classes=7,
                     **{**TINY, **TINY_MODEL.get(name, {}), **cfg, **extra})


def needs(name, mods) -> bool:
    """True when the model cannot run on ``mods`` (text_mlp without text)."""
    req = getattr(model_class(name), "required_modalities", ())
    return not set(req) <= set(mods)


def test_registry():
    assert {"concat_mlp", "dialogue_gru", "text_mlp", "bc_lstm", "m2fnet", "dialoguetrm"} <= set(list_models())
    with pytest.raises(ValueError, match="already registered"):
        register_model("concat_mlp")(torch.nn.Module)
    with pytest.raises(KeyError, match="unknown model"):
        get_model("nope")


def test_parse_modalities():
    assert parse_modalities("tav") == ["t", "a", "v"]
    assert parse_modalities(["v", "t"]) == ["t", "v"]  # the list form of params.yaml still works
    assert parse_modalities("a") == ["a"]
    for bad in ("", "tx", "tt", []):
        with pytest.raises(ValueError, match="subset"):
            parse_modalities(bad)


@pytest.mark.parametrize("mods", SUBSETS)
@pytest.mark.parametrize("name,cfg", VARIANTS, ids=VARIANT_IDS)
def test_forward_backward(name, cfg, mods):
    if needs(name, mods):
        with pytest.raises(ValueError, match="needs"):
            build(name, cfg, mods)
        return
    model = build(name, cfg, mods)
    feats, present, mask, speaker, label = batch(mods)
    out = model(feats, present, mask, speaker)
    logits, aux = split_output(out)
    assert logits.shape == (3, 5, 7)
    if hasattr(model, "aux_loss"):  # the loss the engine optimises: task CE + the model's auxiliary terms
        aux.update(model.aux_loss(out, {"label": label, "mask": mask}))
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), label.reshape(-1), ignore_index=-100)
    (loss + sum(aux.values())).backward()
    for n, p in model.named_parameters():  # every parameter is used and gets a finite gradient
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("mods", SUBSETS)
@pytest.mark.parametrize("name,cfg", VARIANTS, ids=VARIANT_IDS)
def test_padding_does_not_change_real_outputs(name, cfg, mods):
    if needs(name, mods):
        return
    model = build(name, cfg, mods).eval()
    feats, present, mask, speaker, _ = batch(mods)
    out = comparable(model, feats, present, mask, speaker)  # logits (MCB: its product before the signed sqrt)
    # garbage in the padding, and three more padded turns: real utterances must not notice either
    pad = lambda x, v: torch.cat([x, torch.full((*x.shape[:1], 3, *x.shape[2:]), v, dtype=x.dtype)], 1)  # noqa: E731
    feats2 = {m: pad(f.masked_fill(~mask.unsqueeze(-1), 123.0), 55.0) for m, f in feats.items()}
    present2 = {m: pad(p | ~mask, True) for m, p in present.items()}  # even "present" padding must not leak
    mask2, speaker2 = pad(mask, False), pad(speaker.masked_fill(~mask, 1), 1)
    assert_same_rows(model, out[mask], comparable(model, feats2, present2, mask2, speaker2)[mask2])


@pytest.mark.parametrize("mods", SUBSETS)
@pytest.mark.parametrize("name,cfg", VARIANTS, ids=VARIANT_IDS)
def test_absent_modality_is_ignored(name, cfg, mods):
    if needs(name, mods):
        return
    model = build(name, cfg, mods).eval()
    feats, present, mask, speaker, _ = batch(mods)
    for m in mods:
        present[m][0, 2] = False
    out = split_output(model(feats, present, mask, speaker))[0]
    for m in mods:
        feats[m][0, 2] = 99.0  # marked absent: its values must not matter
    torch.testing.assert_close(out, split_output(model(feats, present, mask, speaker))[0])


@pytest.mark.parametrize("name", list_models())
def test_overfits_tiny_batch(name):
    model = build(name, {}, "tav", dropout=0.0)
    feats, present, mask, speaker, label = batch("tav")

    def step():
        logits, _ = split_output(model(feats, present, mask, speaker))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), label.reshape(-1), ignore_index=-100)
        return loss, loss.detach()

    assert overfit(model, step).item() < 0.1


def dialogues(n=6, seed=0, mods="tav"):
    return toy_dialogues(DIMS, n, seed, mods)


CFG = EngineConfig(epochs=2, batch_size=2, lr=3e-3, patience=5)


@pytest.mark.parametrize("name", list_models())
def test_engine_training_is_deterministic(name):
    data = dialogues()
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = get_model(name, input_dims=DIMS, n_classes=7, **TINY)
        init = {k: v.clone() for k, v in model.state_dict().items()}
        runs.append((Engine(model, CFG, "cpu", torch.ones(7)).fit(data, data[:3], seed=1), model.state_dict()))
    (ra, sa), (rb, sb) = runs
    assert ra["history"] == rb["history"] and ra["epoch"] == rb["epoch"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)
    assert any(not torch.equal(init[k], v) for k, v in sa.items())  # it did train


class HookedModel(torch.nn.Module):
    """concat-MLP-like model using every engine hook; ``extra`` is trained only through its auxiliary loss."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(DIMS["t"], 7)
        self.extra = torch.nn.Parameter(torch.ones(1))
        self.calls = {"before_step": 0}

    def forward(self, feats, present, mask, speaker):
        return {"logits": self.lin(feats["t"]), "losses": {"reg": 0.1 * self.extra.pow(2).sum()}}

    def aux_loss(self, out, batch):
        assert (batch["label"][~batch["mask"]] == -100).all()  # labels reach the hook, padding marked
        return {"mean_logit": 0.0 * out["logits"].mean()}

    def before_step(self, epoch, step):
        self.calls["before_step"] += 1
        self.lin.weight.grad.zero_()  # a gradient-modulation hook may rewrite gradients: here, freeze lin

    def epoch_logs(self):
        return {"rho_t": 1.5}


def test_engine_hooks():
    model = HookedModel()
    w0 = model.lin.weight.detach().clone()
    res = Engine(model, EngineConfig(epochs=2, batch_size=2, lr=1e-2, weight_decay=0.0), "cpu").fit(
        dialogues(mods="t"), dialogues(3, seed=1, mods="t"))
    assert model.calls["before_step"] == 2 * 3  # 6 dialogues, batch 2, 2 epochs
    torch.testing.assert_close(model.lin.weight, w0)  # before_step ran before the optimiser step
    assert model.extra.item() < 1.0  # the auxiliary loss was optimised
    row = res["history"][0]["train"]
    assert {"aux_reg", "aux_mean_logit", "rho_t", "lr", "weighted_f1"} <= set(row)
    assert row["aux_reg"] == pytest.approx(0.1, rel=0.05)
