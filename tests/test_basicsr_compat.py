"""basicsr imports through textualdeg.basicsr_compat on a torchvision without functional_tensor."""

from __future__ import annotations

import subprocess
import sys

import numpy as np


def test_plain_import_fails_and_compat_import_works():
    code = (
        "import importlib, sys\n"
        "try:\n"
        "    import basicsr\n"
        "    plain = 'ok'\n"
        "except ModuleNotFoundError as err:\n"
        "    plain = err.name\n"
        "for name in [m for m in sys.modules if m == 'basicsr' or m.startswith('basicsr.')]:\n"
        "    del sys.modules[name]\n"
        "from textualdeg.basicsr_compat import import_basicsr\n"
        "mod = import_basicsr()\n"
        "from basicsr.metrics import calculate_psnr\n"
        "from basicsr.data.transforms import paired_random_crop, augment\n"
        "print(plain, mod.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    plain, name = out.stdout.split()
    # torchvision 0.29 removed the module basicsr 1.4.2 imports; the compat module bridges it
    assert plain in ("torchvision.transforms.functional_tensor", "ok")
    assert name == "basicsr"


def test_import_basicsr_returns_working_module():
    from textualdeg.basicsr_compat import import_basicsr

    basicsr = import_basicsr()
    assert import_basicsr() is basicsr  # cached
    from basicsr.metrics import calculate_psnr

    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255
    expected = 10 * np.log10(255.0**2 / (255.0**2 / a.size))
    assert abs(calculate_psnr(a, b, crop_border=0) - expected) < 1e-9
