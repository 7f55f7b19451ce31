"""Subcommands of the `neuromas` CLI, one module each (see `neuromas.cli.COMMANDS`)."""
