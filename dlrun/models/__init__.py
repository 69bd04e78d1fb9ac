"""Model zoo: one file per architecture, each registered with `@register_model`.

Importing this package registers every model (and stores its schema for Hydra); the modules
import torch, scikit-learn or XGBoost only inside their builders.
"""

from dlrun.models import (  # noqa: F401  (registration side effect)
    attention,
    autoencoder,
    cnn1d,
    gan,
    gru,
    lenet5,
    linear,
    lstm,
    mlp,
    pretrained,
    random_forest,
    rnn,
    xgb,
)
