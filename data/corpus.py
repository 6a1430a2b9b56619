"""Documents from a corpus: a directory of text/code files, a JSONL file with a text field, or the
Python standard library sources of the running interpreter (the default: it ships with every Python)."""
from __future__ import annotations

import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pretrain.errors import HetronError

STDLIB = "stdlib"
TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst", ".c", ".h", ".cc", ".cpp", ".hpp", ".json", ".toml", ".cfg", ".sh")

# The recipe configs (configs/125m.yaml, 1b, 7b) name their corpus /path/to/corpus.jsonl: a value to replace.
PLACEHOLDER_PREFIX = "/path/to/"
JSONL_SUFFIXES = (".jsonl", ".json")


def corpus_problem(corpus: str) -> str | None:
    """Why `corpus` cannot be read, to follow its key in a message; None when it can."""
    if corpus == STDLIB:
        return None
    if corpus.startswith(PLACEHOLDER_PREFIX):
        return "is the recipe's placeholder: give your corpus (a directory of text files or a .jsonl file)"
    if not Path(corpus).exists():
        return "does not exist (give a directory, a .jsonl file, or 'stdlib')"
    if Path(corpus).is_file() and Path(corpus).suffix not in JSONL_SUFFIXES:
        return "is a file but not JSONL (.jsonl); give a directory or a .jsonl file"
    return None


@dataclass(frozen=True)
class Document:
    name: str  # where it came from: a path, or "file.jsonl:LINE"
    text: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _files_under(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in suffixes]
    return sorted(p for p in files if "site-packages" not in p.relative_to(root).parts)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def iter_documents(corpus: str, text_field: str = "text") -> Iterator[Document]:
    """Yield every non-empty document of `corpus` in a fixed order."""
    if corpus == STDLIB:
        root, suffixes = stdlib_root(), (".py",)
    else:
        root, suffixes = Path(corpus), TEXT_SUFFIXES
        problem = corpus_problem(corpus)
        if problem:
            raise HetronError(f"corpus {corpus!r} {problem}")
    if root.is_file():
        yield from _iter_jsonl(root, text_field)
        return
    for path in _files_under(root, suffixes):
        text = _read_text(path)
        if text and text.strip():
            yield Document(str(path.relative_to(root)), text)


def _iter_jsonl(path: Path, text_field: str) -> Iterator[Document]:
    if path.suffix not in JSONL_SUFFIXES:
        raise HetronError(f"corpus file {path} is not JSONL (.jsonl); give a directory or a .jsonl file")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HetronError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                raise HetronError(f"{path}:{lineno}: no {text_field!r} field (set --text-field)")
            text = record[text_field]
            if isinstance(text, str) and text.strip():
                yield Document(f"{path.name}:{lineno}", text)
