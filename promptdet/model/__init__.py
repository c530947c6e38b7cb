"""The promptable detector (torch). Import from the submodules; nothing runs at import."""
