"""Realistic programs the model writes about an image keep working behind both walls."""

from __future__ import annotations

import pytest

from vision_agent.config import PythonToolSettings
from vision_agent.core.messages import ImagePart
from vision_agent.tooling.sandbox import run_python

LIMITS = PythonToolSettings(timeout_s=10, cpu_s=5, memory_mb=1024, max_output_chars=5000)


@pytest.fixture(scope="module")
def image() -> ImagePart:
    """40 x 30: white background, a red 10 x 8 box at (5, 4), a blue 6 x 6 box at (25, 15)."""
    import numpy as np

    pixels = np.full((30, 40, 3), 255, dtype=np.uint8)
    pixels[4:12, 5:15] = (220, 20, 20)
    pixels[15:21, 25:31] = (20, 20, 220)
    return ImagePart.model_construct(
        type="image", sha256="0" * 64, width=40, height=30, rgb=pixels.tobytes(), source="t"
    )


BENIGN = {
    "dominant_colours": (
        "import numpy as np\nfrom collections import Counter\n"
        "c = Counter(map(tuple, image.reshape(-1, 3).tolist()))\n[(k, v) for k, v in c.most_common(3)]",
        "[((255, 255, 255), 1084), ((220, 20, 20), 80), ((20, 20, 220), 36)]",
    ),
    "bounding_box_of_non_background": (
        "import numpy as np\nmask = (image != 255).any(axis=2)\nys, xs = np.nonzero(mask)\n"
        "(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))",
        "(5, 4, 30, 20)",
    ),
    "brightness_histogram": (
        "import numpy as np\ngrey = image.mean(axis=2)\nhist, edges = np.histogram(grey, bins=4, range=(0, 256))\n"
        "hist.tolist()",
        "[0, 116, 0, 1084]",
    ),
    "red_region_area_and_centroid": (
        "import numpy as np\nr, g, b = (image[..., i].astype(int) for i in range(3))\n"
        "red = (r > 150) & (g < 100) & (b < 100)\nys, xs = np.nonzero(red)\n"
        "(int(red.sum()), round(float(xs.mean()), 1), round(float(ys.mean()), 1))",
        "(80, 9.5, 7.5)",
    ),
    "edges_by_gradient": (
        "import numpy as np\ng = image.mean(axis=2)\ngy, gx = np.gradient(g)\nint((np.hypot(gx, gy) > 50).sum())",
        None,
    ),
    "class_with_state_and_star_args": (
        "class Box:\n    def __init__(self, x0, y0, x1, y1):\n        self.w = x1 - x0\n        self.h = y1 - y0\n"
        "    def area(self):\n        return self.w * self.h\n"
        "boxes = [Box(*b) for b in [(5, 4, 15, 12), (25, 15, 31, 21)]]\n"
        "[b.area() for b in boxes]",
        "[80, 36]",
    ),
    "decorator_with_wraps": (
        "import functools\ndef logged(f):\n    @functools.wraps(f)\n    def inner(*a):\n        return f(*a)\n"
        "    return inner\n@logged\ndef add(a, b):\n    return a + b\nadd(2, 3)",
        "5",
    ),
    "json_report": (
        "import json, statistics\nvals = image[..., 0].ravel().tolist()\n"
        "json.dumps({'mean': round(statistics.mean(vals), 2), 'max': max(vals)})",
        '\'{"mean": 245.62, "max": 255}\'',
    ),
    "time_and_decimal": (
        "import datetime, decimal\nwith decimal.localcontext(prec=5):\n    d = decimal.Decimal(1) / 7\n"
        "(datetime.datetime.now().year >= 2024, str(d))",
        "(True, '0.14286')",
    ),
    "counter_item_writes": (
        "import collections\nc = collections.Counter()\nc['a'] = 2\ndel c['a']\nc['b'] = 1\nc",
        "Counter({'b': 1})",
    ),
    "colour_quantisation": (
        "import numpy as np\nq = (image // 64) * 64\nlen(np.unique(q.reshape(-1, 3), axis=0))",
        "3",
    ),
}


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_benign_image_program(name, image):
    code, value = BENIGN[name]
    result = run_python(code, LIMITS, image=image)
    assert result.ok, result.error
    if value is not None:
        assert result.value == value
