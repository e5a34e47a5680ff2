"""Test-session machinery for pytest: fault isolation between tests (`isolation`). At the top with the CLI: it may
import every stage."""
