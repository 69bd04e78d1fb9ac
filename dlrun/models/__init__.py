"""Model zoo: one file per architecture, each registered with `@register_model`.

Importing this package registers every model (and stores its schema for Hydra); the modules
import torch only inside their builders.
"""

from dlrun.models import lenet5, mlp  # noqa: F401  (registration side effect)
