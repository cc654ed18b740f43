"""Subcommands of the ``fewshot`` CLI, one module each (see ``fewshot.cli``)."""
