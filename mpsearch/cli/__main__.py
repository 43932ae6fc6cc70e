"""`python -m mpsearch.cli …`: the same app as the `mpsearch` command."""

from mpsearch.cli import app

app()
