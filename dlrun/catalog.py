"""Import every option module once, so the registries and Hydra's ConfigStore are complete.

Each module here is light (dataclasses and builders that import torch or scikit-learn only when
called), which keeps `dlrun --help` and tab completion quick.
"""

from __future__ import annotations

import functools


@functools.cache
def load_catalog() -> None:
    import dlrun.data.arrays  # noqa: F401
    import dlrun.data.digits  # noqa: F401
    import dlrun.data.files  # noqa: F401
    import dlrun.data.synthetic  # noqa: F401
    import dlrun.data.tabular  # noqa: F401
    import dlrun.data.vision  # noqa: F401
    import dlrun.models  # noqa: F401
    from dlrun import loggers, optim
    from dlrun.config import store_base_schemas

    store_base_schemas()
    optim.store_schemas()
    loggers.store_schemas()
