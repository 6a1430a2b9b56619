"""Output folders written under a temporary name beside the target and renamed when complete, so a
failed conversion leaves nothing behind."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from pretrain.errors import HetronError


def check_new_output(out: Path, flag: str = "--out") -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HetronError(f"{flag} {out} already exists and is not empty; choose a new folder")


@contextlib.contextmanager
def staged_folder(out: Path):
    """Yields a temporary folder that becomes `out` when the block completes, and is removed if it fails."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            out.rmdir()  # empty (check_new_output)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
