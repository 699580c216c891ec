"""Networks, their registry and checkpoint loading."""
from vsqe.models.registry import ModelSpec, get_model_spec, model_names, register

__all__ = ["ModelSpec", "get_model_spec", "model_names", "register", "build_model"]


def build_model(name: str, weights: str | None = None, *, require_weights: bool = True):
    """Builds a registered model in eval mode with `weights`, or its shipped default.

    Returns (module, spec, weights_path or None). With no weights and no shipped default, raises
    ModelError when `require_weights`, else returns the randomly initialised network.
    """
    from vsqe.errors import ModelError
    from vsqe.models.checkpoint import load_weights

    import torch

    spec = get_model_spec(name)
    # A fixed seed makes the untrained network (tests, --allow-untrained) the same in every
    # process and front end, so their outputs can be compared bit for bit.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = spec.build()
    path = weights if weights is not None else spec.default_weights_path()
    if path is None:
        if require_weights:
            raise ModelError(
                f"model {name!r} has no trained default weights installed; pass --weights FILE "
                "(an official checkpoint or one made by `vsqe train`)"
            )
    else:
        load_weights(model, spec, path)
    model.eval()
    return model, spec, path
