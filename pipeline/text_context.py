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
               count_tokens: Callable[[str], int] = lambda s: len(s.split())) -> tuple[str, str | None]:
    """(first segment, second segment or None) for one utterance under ``mode``."""
    if mode not in MODES:
        raise ValueError(f"text.context must be one of {MODES}, got {mode!r}")
    turns = index.turns[dialogue_id]
    t = index.pos[(dialogue_id, int(utterance_id))]
    _, speaker, text = turns[t]
    if mode == "utterance":
        return text, None
    past = turns[max(0, t - window) : t] if mode == "dialoguetrm" else turns[:t]
    later = (turns[t + 1 : t + 1 + window] if mode == "dialoguetrm" else turns[t + 1 :]) if future else []
    if mode == "dialoguetrm":
        ctx = [x for _, s, x in past if s == speaker] + [x for _, s, x in later if s == speaker]
        return text, " ".join(ctx) or None
    # speaker mode: walk outwards from t (most recent past first), keep whole turns within the budget
    kept_past, kept_later, used = [], [], 0
    for _, s, x in reversed(past):
        cost = count_tokens(f"{s}: {x}")
        if used + cost > budget:
            break
        kept_past.insert(0, f"{s}: {x}")
        used += cost
    for _, s, x in later:
        cost = count_tokens(f"{s}: {x}")
        if used + cost > budget:
            break
        kept_later.append(f"{s}: {x}")
        used += cost
    return f"{speaker}: {text}", " ".join(kept_past + kept_later) or None
