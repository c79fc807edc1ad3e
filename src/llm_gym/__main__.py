import sys
from pathlib import Path

if not __package__:
    # Run as a file (`python src/llm_gym/__main__.py`, as torchrun does): import the package from src/,
    # and keep this directory off sys.path so `config`, `data`, ... do not shadow other packages.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from llm_gym.cli import main

if __name__ == "__main__":
    main(prog_name="llm_gym")
