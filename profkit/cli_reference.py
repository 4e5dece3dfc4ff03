"""docs/cli.md, generated from the click commands themselves so it cannot drift.

Regenerate with `python -m profkit.cli_reference > docs/cli.md`.
"""
from __future__ import annotations

import click

from .cli import cli


def markdown() -> str:
    out = ["# profkit command reference", "",
           "Generated from the code by `python -m profkit.cli_reference`; do not edit by hand.", ""]
    settings = {**cli.context_settings, "terminal_width": 100, "max_content_width": 100}
    root = click.Context(cli, info_name="profkit", **settings)
    out += ["```", cli.get_help(root), "```", ""]
    for name in sorted(cli.list_commands(root)):
        command = cli.get_command(root, name)
        ctx = click.Context(command, info_name=name, parent=root, **settings)
        out += [f"## profkit {name}", "", "```", command.get_help(ctx), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown())
