"""The optional dependencies of the ``data`` extra: pyarrow (parquet, Arrow) and zstandard (``.zst``)."""

import importlib
from pathlib import Path
from types import ModuleType

from llm_gym.errors import UserError


def import_data_extra(module: str, needed_for: Path) -> ModuleType:
    """``module``, or a :class:`UserError` saying which input needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise UserError(
            f"{needed_for}: reading it needs {module}; install it with pip install 'llm_gym[data]'"
        ) from error
