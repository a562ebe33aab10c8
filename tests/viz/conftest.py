import base64
import io

import numpy as np
import pytest
from PIL import Image


def _decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


@pytest.fixture
def decode_png():
    """Decode the ``data:image/png;base64`` source of a Plotly ``go.Image`` into pixels."""
    return _decode
