"""argparse for hetron's launch commands: a bad option is one line (`hetron submit: error: ...`) and exit 2,
like every other bad input, instead of argparse's usage block."""
from __future__ import annotations

import argparse

from pretrain.errors import HetronError


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise HetronError(f"{message} (see --help)")
