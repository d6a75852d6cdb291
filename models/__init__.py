"""Model zoo: every model registers by name (``get_model(name, **cfg)``, ``list_models()``)."""
from models.registry import get_model, list_models, model_class, register_model

# Importing the modules registers their models.
from models import baselines, dialoguetrm, m2fnet  # noqa: F401,E402
from models import summer  # noqa: F401,E402

__all__ = ["get_model", "list_models", "model_class", "register_model"]
