"""What reading a `_target_` from source decides, and what it leaves to the step's importing check.

Each case is a small package written to disk and read, never imported: a
wrong answer here would refuse a config that runs, so every construct the
reader cannot follow must come back as None (undecided), not as a guess.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from trainflow.config.static_targets import TargetNotFound, read_target
from trainflow.config.validate import _accepted_scalars

FILES = {
    "__init__.py": """
        from .core import *
        from .models import Net as PublicNet
        from . import models as models_alias
    """,
    "core.py": """
        __all__ = ["Exported"]

        class Exported:
            def __init__(self, size: int = 1) -> None: ...

        class NotExported:
            def __init__(self, size: int = 1) -> None: ...
    """,
    "models.py": """
        import dataclasses
        from typing import Any, Literal, Optional, Union

        import torch_that_is_not_installed
        from .base import Base

        Scale = Union[float, "Base"]

        class Net(Base):
            def __init__(self, width: int, rate: Optional[float] = None, scale: Scale = 1.0, mode: Literal["a"] = "a",
                         tensor: "torch_that_is_not_installed.Tensor | None" = None, *, anything: Any = None,
                         either: int | str = 1) -> None: ...

        class Inherits(Base):
            pass

        @dataclasses.dataclass
        class Data:
            x: int = 1

        class WithMeta(Base, metaclass=type):
            def __init__(self, x: int) -> None: ...

        class TwoBases(Base, Net):
            pass

        def build(name: str, depth: int = 2, **extra: Any) -> None: ...

        def _deco(f): return f

        @_deco
        def decorated(x: int) -> None: ...

        try:
            from fast import Maybe
        except ImportError:
            class Maybe:
                def __init__(self, x: int) -> None: ...
    """,
    "base.py": """
        class Base:
            def __init__(self, flag: bool = False) -> None: ...
    """,
}


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"static_pkg_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / name
    root.mkdir()
    for file, text in FILES.items():
        (root / file).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def params(package: str, target: str) -> dict[str, object]:
    found = read_target(f"{package}.{target}")
    assert found is not None, target
    return {name: _accepted_scalars(p.annotation) for name, p in found.signature.parameters.items()}


def test_classes_and_functions_are_read_through_re_exports(package: str) -> None:
    assert params(package, "Exported") == {"size": ((int,), "int")}  # through `from .core import *`
    assert list(params(package, "PublicNet")) == ["width", "rate", "scale", "mode", "tensor", "anything", "either"]
    assert params(package, "models.Inherits") == {"flag": ((bool,), "bool")}  # the one base's __init__
    assert params(package, "models.build") == {"name": ((str,), "str"), "depth": ((int,), "int"), "extra": None}
    assert package not in sys.modules  # read, never imported


def test_annotations_are_judged_as_imported_ones(package: str) -> None:
    judged = params(package, "models.Net")
    assert judged["width"] == ((int,), "int")
    assert judged["rate"] == ((int, float), "float")  # Optional
    assert judged["scale"] == ((int, float), "float")  # an alias: Union[float, <a class>]
    assert judged["tensor"] is None  # a class of a package not installed: no scalar fits
    assert judged["mode"] is None and judged["anything"] is None  # Literal, Any: anything may fit
    assert judged["either"] == ((int, str), "int or str")


@pytest.mark.parametrize("target", [
    "models.Data",  # a dataclass makes its __init__
    "models.WithMeta",  # a metaclass may take the call
    "models.TwoBases",  # which __init__ wins is the MRO's call
    "models.decorated",  # a decorator may change the signature
    "models.Maybe",  # bound under try/except: the run decides
    "models_alias",  # a module, not a callable
])
def test_what_only_the_import_can_tell_is_left_undecided(package: str, target: str) -> None:
    assert read_target(f"{package}.{target}") is None


@pytest.mark.parametrize(("target", "message"), [
    ("no_such_top_level_pkg.Thing", "no module named 'no_such_top_level_pkg'"),
    ("{package}.nope.Thing", "no module named '{package}.nope'"),
    ("{package}.models.Nope", "module '{package}.models' has no attribute 'Nope'"),
    ("{package}.NotExported", "module '{package}' has no attribute 'NotExported'"),  # not in core's __all__
])
def test_a_target_that_cannot_exist_is_reported(package: str, target: str, message: str) -> None:
    with pytest.raises(TargetNotFound, match=message.format(package=package)):
        read_target(target.format(package=package))
