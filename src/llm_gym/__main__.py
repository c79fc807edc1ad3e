import os
import sys
from pathlib import Path

if not __package__:
    # Run as a file (`python src/llm_gym/__main__.py`, as torchrun does): import the package from src/,
    # and keep this directory off sys.path so `config`, `data`, ... do not shadow other packages.
    sys.path[0] = str(Path(__file__).resolve().parents[1])
elif sys.path and sys.path[0] == os.getcwd():
    # `python -m llm_gym` puts the current directory first on sys.path, so a file there (a `transformers.py`
    # in a downloaded experiment directory) would run in place of a package llm_gym imports. The `llm_gym`
    # command has no such entry; user_modules are imported from the directory the user named.
    del sys.path[0]

from llm_gym.cli import main

if __name__ == "__main__":
    main(prog_name="llm_gym")
