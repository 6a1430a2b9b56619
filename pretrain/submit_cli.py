"""`hetron submit`: launch/submit_cli.py's command, with `hetron train` (pretrain/train_program.py) as the
program it runs in the job."""
from __future__ import annotations


def main(argv: list[str]) -> int:
    from launch.submit_cli import main as submit_main
    from pretrain.train_program import TRAIN

    return submit_main(argv, TRAIN)
