"""Feature-extraction runtime shared by the extract stages (and predict): media decoding, sharded runners, Ray, imported feature pickles, text encoders and their context."""
