"""A bundle's ``README.md``: a Hugging Face model card (YAML front matter, then Markdown) with the run's own numbers.

The front matter carries ``model_name``, ``license``, ``datasets``, ``metrics``, ``tags``, ``language``,
``pipeline_tag`` and a ``model-index`` whose results are the test metrics (mean over seeds; the selected seed's
value too); the body says what the model was trained on (corpus, split sizes), how (seeds, the dev-selected seed and
epoch), how well (test metrics ± standard deviation over seeds), what it is for and not for, and the predict command.
Every number comes from the training run (``card`` from ``pipeline.train.card_facts``): nothing is typed by hand.
"""
from __future__ import annotations

import yaml

# what the card says about a corpus by prepare adapter: the name, a Hugging Face dataset id, the data's licence
CORPORA = {
    "meld": dict(name="MELD", id="declare-lab/MELD", license="gpl-3.0", language="en",
                 about="MELD (Poria et al., ACL 2019): utterances of the TV series Friends in their dialogues, "
                       "7 emotions; distributed under GPL-3.0"),
    "demo": dict(name="merc demo corpus", id="merc-demo", license="other", language="en",
                 about="the project's tiny synthetic demo corpus (data/demo): for tests only"),
    "iemocap": dict(name="IEMOCAP", id="iemocap", license="other", language="en",
                    about="IEMOCAP (Busso et al., 2008), under USC SAIL's release agreement: do not redistribute"),
    "mosei": dict(name="CMU-MOSEI", id="cmu-mosei", license="other", language="en",
                  about="CMU-MOSEI (Zadeh et al., ACL 2018)"),
}
METRICS = [("weighted_f1", "f1", "weighted F1"), ("macro_f1", "f1", "macro F1"), ("accuracy", "accuracy", "accuracy")]
MODALITY = {"t": "text", "a": "audio", "v": "visual"}


def _fmt(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def model_card(meta: dict, card: dict) -> str:
    """The card's text for a bundle described by ``meta`` (bundle.json's content) and ``card`` (the run's facts:
    ``corpus``, ``splits``, ``seeds``, ``test``, ``n_params``, optional ``license``/``limitations``/``command``)."""
    corpus = card.get("corpus") or {}
    c = CORPORA.get(corpus.get("adapter"), dict(name=corpus.get("source") or corpus.get("adapter") or "unknown",
                                                id=corpus.get("adapter") or "unknown", license="other",
                                                language="en", about="a corpus prepared by merc's prepare stage"))
    mods = "".join(meta["modalities"])
    name = f"merc-{meta['model']}-{mods}-{c['id'].split('/')[-1].lower()}"
    test, seeds = card.get("test") or {}, card.get("seeds") or []
    enc = ((meta.get("extractors") or {}).get("text_encoder") or {}).get("model")
    front = {
        "model_name": name,
        "license": card.get("license") or c["license"],
        "language": [c["language"]],
        "datasets": [c["id"]],
        "metrics": sorted({m for _, m, _ in METRICS}),
        "pipeline_tag": "text-classification" if mods == "t" else "other",
        "tags": ["emotion-recognition", "emotion-recognition-in-conversation", "merc", meta["model"],
                 *[MODALITY[m] for m in meta["modalities"]]],
    }
    if test:
        front["model-index"] = [{"name": name, "results": [{
            "task": {"type": "text-classification", "name": "Emotion recognition in conversation"},
            "dataset": {"name": c["name"], "type": c["id"], "split": "test"},
            "metrics": [{"type": t, "name": f"{label} (mean over {len(seeds)} seed(s))", "value": round(test[k][0], 4)}
                        for k, t, label in METRICS if k in test]}]}]
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {name}", "",
             f"A `{meta['model']}` model for emotion recognition in conversation from merc "
             f"({', '.join(MODALITY[m] for m in meta['modalities'])} input), trained by merc's `train` stage.", "",
             "## Data", "", f"- Corpus: {c['about']}.",
             f"- Labels ({len(meta['labels'])}): {', '.join(meta['labels'])}."]
    splits = card.get("splits") or {}
    if splits:
        lines.append("- Split (labelled utterances): "
                     + ", ".join(f"{s} {n}" for s, n in splits.items()) + ".")
    if enc and "t" in meta["modalities"]:
        lines.append(f"- Text features: the frozen encoder `{enc}` (mean pooling, "
                     f"context `{(meta['extractors'].get('text') or {}).get('context', '?')}`), standardised with "
                     "the training split's statistics.")
    lines += ["", "## Training", "",
              f"- Model `{meta['model']}` ({card.get('n_params', '?'):,} parameters), config "
              f"`{yaml.safe_dump(meta.get('cfg') or {}, default_flow_style=True).strip()}`."
              if isinstance(card.get("n_params"), int) else f"- Model `{meta['model']}`.",
              f"- Seeds: {', '.join(str(s['seed']) for s in seeds) or meta.get('seed')}; each selects its epoch on "
              f"dev weighted F1; the bundle holds seed {meta.get('seed')} (best on dev), epoch {meta.get('epoch')}, "
              f"dev weighted F1 {100 * float(meta.get('dev_weighted_f1', 0)):.2f}."]
    for s in seeds:
        lines.append(f"  - seed {s['seed']}: epoch {s['epoch']}, dev weighted F1 {100 * s['dev_weighted_f1']:.2f}")
    lines += ["", "## Test results", ""]
    if test:
        lines += [f"On the test split ({test.get('n', '?')} utterances), mean ± standard deviation over "
                  f"{len(seeds)} seed(s) (the test split chose nothing):", "", "| metric | value (%) |",
                  "|---|---|"]
        lines += [f"| {label} | {_fmt(*test[k])} |" for k, _, label in METRICS if k in test]
    else:
        lines.append("Not measured when the bundle was written: see `reports/metrics.json` (`dvc repro evaluate`).")
    lines += ["", "## Intended use", "",
              "Research and demonstration: labelling the emotion of each utterance of an English conversation "
              "(a video with subtitles, or transcribed by ASR) with `python -m pipeline.predict`. Not for decisions "
              "about people (hiring, health, policing, surveillance).", "", "## Limitations", ""]
    lim = list(card.get("limitations") or [])
    if mods == "t" and enc:
        lim.insert(0, f"Text only, frozen {enc}: tone of voice and faces are ignored; sarcasm and context-free "
                      "one-word turns are often wrong.")
    lim += [f"Trained on {c['name']} only: other domains, accents and languages will score lower than the test "
            "numbers above.",
            "Class imbalance: minority emotions (e.g. fear, disgust) are predicted rarely and poorly; read the "
            "confidence column."]
    lines += [f"- {x}" for x in lim]
    lines += ["", "## Use", "", "```", card.get("command") or
              "python -m pipeline.predict VIDEO --subtitles SUBS.srt --bundle THIS_FOLDER --out OUT", "```", "",
              "The folder is self-describing (`bundle.json`), `manifest.json` holds the SHA-256 of every file "
              "(this card included) and predict refuses a bundle whose files do not match it.", ""]
    return "\n".join(lines)


def front_matter(text: str) -> dict:
    """The YAML front matter of a card (between the first two ``---`` lines)."""
    if not text.startswith("---\n"):
        raise ValueError("no front matter")
    return yaml.safe_load(text[4:text.index("\n---\n", 4)])
