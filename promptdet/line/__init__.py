"""The inspection line: recipe (YAML) -> rules -> verdict -> sinks, and reports over the results.

Nothing here imports torch; the camera loop (issue #6) will sit on top of these pieces.
"""
