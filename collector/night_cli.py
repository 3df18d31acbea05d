"""Feature wiring (see collector/features.py): placeholder until the feature lands."""

COMMANDS: list = []
