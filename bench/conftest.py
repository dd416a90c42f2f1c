"""The training and export scripts under `scripts/` are run as commands (see their docstrings), not collected: their
modules share basenames (`export.py`) and have no examples to run."""

collect_ignore = ["scripts"]
