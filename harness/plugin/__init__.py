"""Test-session machinery: the pytest plugin (`pytest_plugin`, entry point pytest11), the checks it runs on a recipe
(`recipe_checks`), cases loaded once per process (`cases`), fault isolation between tests (`isolation`). At the top
with the CLI: it may import every stage."""
