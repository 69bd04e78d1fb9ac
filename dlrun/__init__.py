"""dlrun: a declarative training CLI on PyTorch."""

import time

__version__ = "0.1.0"

STARTED = time.perf_counter()  # when dlrun was first imported: the start of a `dlrun` command
