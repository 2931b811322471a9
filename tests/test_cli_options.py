"""No option of the command line is accepted and then ignored: every option a command declares is read by
its code (a static check over every command), and options that apply to one mode of a command only are
refused in the other (tested per command where they exist, e.g. ``diff``)."""

import ast
import inspect
import textwrap

import click


def commands(group: click.Group, prefix: str = ""):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def test_every_option_of_every_command_is_read_by_its_code():
    from superlens.cli import cli

    unread = []
    for name, command in commands(cli):
        function = inspect.unwrap(command.callback)
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        body = tree.body[0].body
        read = {node.id for stmt in body for node in ast.walk(stmt) if isinstance(node, ast.Name)}
        for param in command.params:
            if isinstance(param, click.Option) and param.name not in read and not param.is_eager:
                unread.append(f"{name} {param.opts[0]}")
    assert not unread, f"options no code reads: {unread}"
