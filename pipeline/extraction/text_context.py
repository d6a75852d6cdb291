"""Conversational context for the text encoder: which turns go beside an utterance, as a text pair.

Modes (``text.context``):
  * ``utterance``: the utterance alone.
  * ``dialoguetrm``: DialogueTRM's self-dependency input (Mao et al. 2021, Eq. 1):
    ``[CLS] u_t [SEP] same-speaker turns within the window K [SEP]`` with segment ids 0/1 — the speaker's
    own previous turns among the ``window`` turns before ``t``.
  * ``speaker``: SUMMER/COSMIC-style conversational context: ``"Speaker: text"`` of the previous turns
    (any speaker), the most recent kept first when the ``budget`` of context tokens runs out; the target
    is the first segment, marked with its speaker.
Context never crosses a dialogue boundary and never looks at later turns unless ``future`` is set (then
the turns after ``t`` within the same window/budget are appended after the past ones).

Length limit (``max_length``: the encoder's whole input, target + context + special tokens): the context is
filled outwards from ``t`` with WHOLE turns — the most recent past turn first, then older ones, then (``future``)
the nearest later ones — until the next turn would not fit; the rest is dropped. The context string stays in
dialogue order (oldest → newest). Cutting the joined context from its end instead (what ``truncation=
"only_second"`` does) would drop the turns NEAREST to ``t`` and keep the oldest (DialogueTRM's K = 14 at 40
tokens kept turns 0–3 of 14). The target is never shortened for context; when it alone exceeds the limit the
context is empty and the encoder cuts the target.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

MODES = ("utterance", "dialoguetrm", "speaker")


class DialogueIndex:
    """Turns of every dialogue in order, from the utterance table's columns."""

    def __init__(self, dialogue_ids, utterance_ids, speakers, texts):
        turns = defaultdict(list)
        for d, u, s, t in zip(dialogue_ids, utterance_ids, speakers, texts):
            turns[d].append((int(u), s, t or ""))
        self.turns = {d: sorted(v) for d, v in turns.items()}
        self.pos = {(d, u): i for d, v in self.turns.items() for i, (u, _, _) in enumerate(v)}

    @classmethod
    def from_table(cls, table) -> "DialogueIndex":
        c = {n: table.column(n).to_pylist() for n in ("dialogue_id", "utterance_id", "speaker", "text")}
        return cls(c["dialogue_id"], c["utterance_id"], c["speaker"], c["text"])


def build_pair(index: DialogueIndex, dialogue_id: str, utterance_id: int, mode: str, window: int = 8,
               budget: int = 256, future: bool = False,
               count_tokens: Callable[[str], int] = lambda s: len(s.split()), max_length: int | None = None,
               n_special: int = 3) -> tuple[str, str | None]:
    """(first segment, second segment or None) for one utterance under ``mode``.

    ``max_length``: the pair's token limit (``None``: no limit); ``n_special``: the special tokens the tokenizer
    adds to a pair (``tok.num_special_tokens_to_add(pair=True)``: 3 for BERT's [CLS] a [SEP] b [SEP]).
    ``count_tokens`` must count like the encoder's tokenizer for the limit to be exact."""
    if mode not in MODES:
        raise ValueError(f"text.context must be one of {MODES}, got {mode!r}")
    turns = index.turns[dialogue_id]
    t = index.pos[(dialogue_id, int(utterance_id))]
    _, speaker, text = turns[t]
    if mode == "utterance":
        return text, None
    past = turns[max(0, t - window) : t] if mode == "dialoguetrm" else turns[:t]
    later = (turns[t + 1 : t + 1 + window] if mode == "dialoguetrm" else turns[t + 1 :]) if future else []
    if mode == "dialoguetrm":  # Eq. 1's indi-context: the speaker's own turns
        first = text
        past_c = [x for _, s, x in past if s == speaker and x]
        later_c = [x for _, s, x in later if s == speaker and x]
        cost = lambda x: 0  # noqa: E731  (no separate budget: only the length limit)
        limit = None
    else:  # speaker mode: "Speaker: text" of any speaker, within ``budget`` context tokens
        first = f"{speaker}: {text}"
        past_c = [f"{s}: {x}" for _, s, x in past]
        later_c = [f"{s}: {x}" for _, s, x in later]
        cost, limit = count_tokens, budget
    room = None if max_length is None else max_length - n_special - count_tokens(first)
    if room is not None and room <= 0:
        return first, None  # the target alone fills the input: no context, the encoder cuts the target
    # walk outwards from t with whole turns: most recent past first, then the nearest later ones
    kept_past, kept_later, used, est = [], [], 0, 0
    for kept, seq, at in ((kept_past, reversed(past_c), 0), (kept_later, later_c, None)):
        for x in seq:
            c, n = cost(x), count_tokens(x) if room is not None else 0
            if (limit is not None and used + c > limit) or (room is not None and est + n > room):
                break
            kept.insert(len(kept) if at is None else at, x)  # past: prepend (dialogue order), later: append
            used, est = used + c, est + n
    if room is not None:  # joining may tokenise differently from the parts: drop the farthest turn until it fits
        while kept_past or kept_later:
            if count_tokens(" ".join(kept_past + kept_later)) <= room:
                break
            kept_later.pop() if kept_later else kept_past.pop(0)
    return first, " ".join(kept_past + kept_later) or None
