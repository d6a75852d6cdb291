"""Model zoo: every model registers by name (``get_model(name, **cfg)``, ``list_models()``)."""
from models.registry import get_model, list_models, model_class, register_model

# Importing the modules registers their models.
from models import ada2i, baselines, dialoguetrm, lpgnet, m2fnet, summer  # noqa: F401,E402

__all__ = ["get_model", "list_models", "model_class", "register_model"]
