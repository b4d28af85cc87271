"""Console entry points."""

import argparse


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every optional flag's default (a required flag or a switch has none;
    a help text that names its default already keeps its words)."""

    def _get_help_string(self, action):
        if action.required or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return action.help
        if "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def command_parser(doc: str) -> argparse.ArgumentParser:
    """A command's parser: the first paragraph of its docstring, as plain text, for its
    description, and every flag's default in ``--help``."""
    description = doc.strip().split("\n\n")[0].replace("``", "")
    return argparse.ArgumentParser(description=description, formatter_class=DefaultsShown)
