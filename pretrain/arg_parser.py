"""argparse for hetron's commands: a bad option is one line (`hetron submit: error: ...`) and exit 2,
like every other bad input, instead of argparse's usage block."""
from __future__ import annotations

import argparse

from pretrain.errors import HetronError


class OneLineErrorParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        # a misspelt option must not pass as an abbreviation of another (--no-progres)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise HetronError(f"{message} (see --help)")
