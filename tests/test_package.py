"""The package namespace: public names load lazily, so ``import varmap`` stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import varmap

HEAVY = ("torch", "nibabel", "dipy", "matplotlib")


def test_import_loads_no_heavy_library():
    check = f"import sys, varmap; loaded = [m for m in {HEAVY!r} if m in sys.modules]; assert not loaded, loaded"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_command_line_parser_loads_no_heavy_library():
    check = (f"import sys; from varmap import cli; cli.build_parser(); "
             f"loaded = [m for m in {HEAVY!r} if m in sys.modules]; assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", varmap.__all__)
def test_every_public_name_resolves(name):
    assert getattr(varmap, name) is not None
    assert name in dir(varmap)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'fit_imge'"):
        varmap.fit_imge  # noqa: B018
