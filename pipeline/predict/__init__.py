"""``python -m pipeline.predict VIDEO``: a trained model (its bundle, ``pipeline.training.bundle``) on a new conversation video.

Steps (modules of this package): utterances from subtitles (``subtitles``) or Whisper ASR (``asr``); speakers from
the subtitles or by diarization (``diarize``); the bundle's features of each utterance's span (``Bundle.featurize``:
the extract stages' own builders) and the model over the conversation in order (``core``, ``video``);
``predictions.csv``, ``timeline.png`` and ``index.html`` (``outputs``). ``demo`` builds a short conversation video
from the demo clips. See ``__main__`` for the options.
"""
