"""The inspection line: recipe (YAML) -> rules -> verdict -> sinks, and reports over the results.

Nothing here imports torch: the camera loop (pipeline.py, run.py) sits on these pieces.
"""
