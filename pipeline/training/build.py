"""Build a registered model from its params section, with a user's settings mistakes as one line."""
from __future__ import annotations

import inspect

from models import get_model, list_models
from models.registry import model_class
from pipeline.errors import MissingFileError, UserError


def build_model(name: str, cfg: dict, dims: dict, n_classes: int, where: str | None = None,
                task: str = "classification"):
    """``get_model`` with a model's settings errors (unknown key, bad value, missing teacher) as one line naming
    ``where`` the settings come from (default: ``params.yaml model_params.<name>``).

    ``task: regression``: ``n_classes`` is the number of targets (the model's last linear layer is the regression
    head); models whose auxiliary losses use the labels take ``task`` and switch those losses to the targets."""
    where = where or f"params.yaml model_params.{name}"
    if name not in list_models():
        raise UserError(f"{where}: unknown model {name!r}; registered: {list_models()}")
    sig = inspect.signature(model_class(name)).parameters
    if "task" in cfg:
        raise UserError(f"{where}: task is not a model setting: it follows the prepared table (prepare.targets / "
                        "prepare.target)")
    if not any(p.kind is p.VAR_KEYWORD for p in sig.values()):
        known = sorted(set(sig) - {"input_dims", "n_classes", "task"})
        unknown = sorted(set(cfg) - set(known))
        if unknown:
            raise UserError(f"{where}: unknown setting(s) {unknown}; {name} takes {known}")
    if "task" in sig:
        cfg = {**cfg, "task": task}
    elif task != "classification" and hasattr(model_class(name), "aux_loss"):
        raise UserError(f"{where}: model {name!r} has label-dependent auxiliary losses but no regression variant")
    try:
        return get_model(name, input_dims=dims, n_classes=n_classes, **cfg)
    except UserError:
        raise
    except FileNotFoundError as e:
        raise MissingFileError(f"{where}: {e}") from e
    except (ValueError, TypeError) as e:  # the models' own checks of their settings
        raise UserError(f"{where}: {e}") from e
