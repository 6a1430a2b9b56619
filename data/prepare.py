"""corpus -> tokenizer -> MDS shards (mosaicml-streaming), one document per sample.

Each document keeps its real length (the long tail matters for sequence parallelism); a document
longer than the max context is cut into consecutive chunks that overlap by one token, so no
next-token prediction is lost, and the number of split documents is counted in the manifest.
The output folder is built under a temporary name and renamed when complete.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from data.corpus import iter_documents
from data.tokenizer import (
    EOS,
    PAD,
    TOKENIZER_CONFIG,
    document_special_ids,
    load_tokenizer,
    special_id,
    tokenizer_file,
    tokenizer_fingerprint,
    train_bpe,
)
from data.sample_store import write_length_index
from pretrain.errors import HetronError

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
SPLITS = ("train", "eval")
COLUMNS = {"tokens": "ndarray:int32"}


@dataclass
class SplitStats:
    documents: int = 0
    samples: int = 0
    tokens: int = 0
    split_documents: int = 0
    max_sample_tokens: int = 0
    length_percentiles: dict = field(default_factory=dict)


@dataclass
class Manifest:
    corpus: str
    tokenizer_fingerprint: str
    vocab_size: int
    max_context: int
    eos_id: int
    pad_id: int
    eval_fraction: float
    splits: dict
    seconds: float = 0.0

    @classmethod
    def load(cls, shards: Path) -> "Manifest":
        path = Path(shards) / MANIFEST
        if not path.is_file():
            raise HetronError(f"{shards} holds no prepared shards ({MANIFEST} missing); run `hetron prepare`")
        try:
            raw = json.loads(path.read_text())
            return cls(**raw)
        except (json.JSONDecodeError, TypeError) as exc:
            raise HetronError(f"{path} is corrupt ({exc}); re-run `hetron prepare --force`") from None


def _name_digest(name: str) -> float:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") / 2**64


def is_eval_document(name: str, eval_fraction: float) -> bool:
    return _name_digest(name) < eval_fraction


def eval_documents(names: list[str], eval_fraction: float) -> set[str]:
    """The held-out documents: those whose name hashes below the fraction, but never none and never
    all of them when there are two or more (a small corpus at 2% would otherwise hold none out)."""
    chosen = {n for n in names if is_eval_document(n, eval_fraction)}
    if len(set(names)) >= 2:
        ranked = sorted(set(names), key=lambda n: (_name_digest(n), n))
        if not chosen:
            chosen = {ranked[0]}
        elif len(chosen) == len(ranked):
            chosen.discard(ranked[-1])
    return chosen


def chunk_document(ids: list[int], max_context: int) -> list[list[int]]:
    """Samples of at most max_context + 1 tokens (inputs + shifted labels), overlapping by one token."""
    span = max_context + 1
    if len(ids) <= span:
        return [ids]
    return [ids[i : i + span] for i in range(0, len(ids) - 1, max_context) if len(ids[i : i + span]) >= 2]


def prepare_shards(
    corpus: str,
    out: str | Path,
    *,
    vocab_size: int = 4096,
    max_context: int = 1024,
    eval_fraction: float = 0.02,
    tokenizer_path: str | None = None,
    text_field: str = "text",
    force: bool = False,
    progress: bool = True,
) -> Manifest:
    out = Path(out)
    if (out / MANIFEST).is_file() and not force:
        return Manifest.load(out)
    if max_context < 8:
        raise HetronError(f"max context {max_context} is too small (at least 8 tokens)")
    if not 0.0 < eval_fraction < 0.5:
        raise HetronError(f"eval fraction {eval_fraction} must lie in (0, 0.5)")
    start = time.time()
    docs = list(iter_documents(corpus, text_field))
    if not docs:
        raise HetronError(f"corpus {corpus!r} holds no non-empty text documents")

    if tokenizer_path:
        tok = load_tokenizer(tokenizer_path)
    else:
        tok = train_bpe((d.text for d in docs), vocab_size)
    eos, pad = document_special_ids(tok, tokenizer_path) if tokenizer_path else (special_id(tok, EOS), special_id(tok, PAD))

    tmp = out.with_name(out.name + f".tmp-{int(time.time() * 1e6)}")
    tmp.mkdir(parents=True)
    try:
        tok.save(str(tmp / TOKENIZER))
        if tokenizer_path and (tokenizer_file(tokenizer_path).parent / TOKENIZER_CONFIG).is_file():
            # later stages prepared with the shards' tokenizer.json keep its EOS/PAD convention
            shutil.copy2(tokenizer_file(tokenizer_path).parent / TOKENIZER_CONFIG, tmp / TOKENIZER_CONFIG)
        stats = {s: SplitStats() for s in SPLITS}
        lengths = {s: [] for s in SPLITS}
        from streaming import MDSWriter  # here: it imports torch, after the corpus and tokenizer are checked

        writers = {s: MDSWriter(out=str(tmp / s), columns=COLUMNS, size_limit="32mb") for s in SPLITS}
        names = [d.name for d in docs]
        held_out = eval_documents(names, eval_fraction)
        # Batch-encode for speed; `tokenizers` parallelises over documents.
        for lo in _progress_range(len(docs), 256, progress, "tokenizing"):
            batch = docs[lo : lo + 256]
            for doc, enc in zip(batch, tok.encode_batch([d.text for d in batch])):
                split = "eval" if doc.name in held_out else "train"
                ids = enc.ids + [eos]
                chunks = chunk_document(ids, max_context)
                st = stats[split]
                st.documents += 1
                st.split_documents += len(chunks) > 1
                for chunk in chunks:
                    writers[split].write({"tokens": np.asarray(chunk, dtype=np.int32)})
                    st.samples += 1
                    st.tokens += len(chunk) - 1
                    st.max_sample_tokens = max(st.max_sample_tokens, len(chunk) - 1)
                    lengths[split].append(len(chunk) - 1)
        for w in writers.values():
            w.finish()
        for split in SPLITS:
            write_length_index(tmp / split, lengths[split])
        for split in SPLITS:
            if stats[split].samples == 0:
                raise HetronError(
                    f"corpus {corpus!r} has {len(names)} document(s): at least two are needed, one of them "
                    "held out for the eval loss"
                )
            arr = np.asarray(lengths[split])
            stats[split].length_percentiles = {
                str(q): int(np.percentile(arr, q)) for q in (50, 90, 99, 100)
            } | {"mean": float(arr.mean())}
        manifest = Manifest(
            corpus=corpus if corpus == "stdlib" else str(Path(corpus).resolve()),
            tokenizer_fingerprint=tokenizer_fingerprint(tok),
            vocab_size=tok.get_vocab_size(),
            max_context=max_context,
            eos_id=eos,
            pad_id=pad,
            eval_fraction=eval_fraction,
            splits={s: asdict(stats[s]) for s in SPLITS},
            seconds=round(time.time() - start, 2),
        )
        (tmp / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2))
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _progress_range(n: int, step: int, show: bool, label: str):
    if not show:
        yield from range(0, n, step)
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=n)
        for lo in range(0, n, step):
            yield lo
            bar.update(task, advance=min(step, n - lo))
