"""What a recipe does, importable: ``recipes/*.py`` are the command lines of these pipelines, and
``hsrl reproduce`` and the tests call them directly (never a script by its file path)."""
