"""Registry of continual-learning methods, selectable by name in the run config (`method.name`).

A method file defines a builder `fn(cfg) -> Strategy` and registers it with `@register(name,
replay=default)`. `build_strategy` applies the generic switches every method combines with:
`method.replay` (add or remove replay) and `method.loss` (dpo or fpo).
"""
METHODS = {}


def register(name, replay=False):
    def wrap(fn):
        METHODS[name] = (fn, replay)
        return fn
    return wrap


def build_strategy(cfg):
    from ..config import ConfigError
    from .replay import Replay

    name = cfg.method.name
    if name not in METHODS:
        raise ConfigError(f"method.name = {name!r} is not allowed; allowed values: {sorted(METHODS)}")
    builder, replay_default = METHODS[name]
    strategy = builder(cfg)
    if cfg.method.loss is not None:
        strategy.loss = cfg.method.loss
    use_replay = replay_default if cfg.method.replay is None else cfg.method.replay
    strategy.plugins = [p for p in strategy.plugins if p.name != "replay"]
    if use_replay:
        # Replay first: it builds the training set the other plugins see.
        strategy.plugins.insert(0, Replay(cfg.method.replay_fraction, cfg.method.replay_cap))
    return strategy


def _register_all():
    """Import every module of this package: each registers its methods (a new method = a new file)."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_register_all()
