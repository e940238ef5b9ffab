import os

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A fresh random generator per test; the seed is printed on failure for replay (LABELWISE_SEED)."""
    seed = int(os.environ.get("LABELWISE_SEED", np.random.SeedSequence().entropy % (2**32)))
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed}")
    return np.random.default_rng(seed)
