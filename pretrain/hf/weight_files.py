"""Hugging Face weight files: read tensors one at a time from safetensors (single or sharded with an
index) or pytorch_model*.bin, and write sharded safetensors with their index.

Reading holds only the tensor asked for: a safetensors tensor is read from its byte range into a
fresh buffer (plain reads, not a memory map, whose touched pages would stay in this process's RSS
until the file is closed); .bin files are loaded with mmap=True. Writing buffers at most one shard.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from pretrain.errors import HetronError

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
# Buffers that old checkpoints saved beside the weights; the model recomputes them.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


class SafetensorsFile:
    """One .safetensors file: its header (the safetensors format: 8-byte little-endian header length,
    a JSON table of dtype, shape and byte range per tensor, then the data), tensors read on demand."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 2 <= length <= 100 * 2**20:
                raise ValueError(f"header length {length} is not plausible")
            header = json.loads(f.read(length))
        header.pop("__metadata__", None)
        self.data_start = 8 + length
        self.entries = header

    def __iter__(self):
        return iter(self.entries)

    def get_tensor(self, name: str) -> torch.Tensor:
        entry = self.entries[name]
        start, end = entry["data_offsets"]
        dtype = getattr(torch, _SAFETENSORS_DTYPES[entry["dtype"]])
        buffer = torch.empty(end - start, dtype=torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + start)
            if f.readinto(memoryview(buffer.numpy())) != end - start:
                raise HetronError(f"{self.path} is truncated (tensor {name!r} runs past the end)")
        return buffer.view(dtype).reshape(entry["shape"])


def _read_index(path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise HetronError(f"{path} is not a weight index (no weight_map: {exc})") from None
    folder = path.parent
    for file in sorted(set(weight_map.values())):
        if not (folder / file).is_file():
            raise HetronError(f"{path} names {file}, which is missing from {folder}")
    return weight_map


class HfWeightReader:
    """Tensors of a Hugging Face model folder by name, read on demand."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._open: dict[str, object] = {}
        if (self.folder / SAFETENSORS_INDEX).is_file():
            self.file_of = _read_index(self.folder / SAFETENSORS_INDEX)
        elif (self.folder / BIN_INDEX).is_file():
            self.file_of = _read_index(self.folder / BIN_INDEX)
        else:
            files = sorted(self.folder.glob("*.safetensors")) or sorted(self.folder.glob("pytorch_model*.bin"))
            if not files:
                raise HetronError(f"{self.folder} holds no weights (model.safetensors, sharded *.safetensors with "
                                  f"{SAFETENSORS_INDEX}, or pytorch_model*.bin)")
            self.file_of = {name: f.name for f in files for name in self._handle(f.name)}
        self.file_of = {n: f for n, f in self.file_of.items() if not n.endswith(IGNORED_SUFFIXES)}

    def _handle(self, file: str):
        if file not in self._open:
            path = self.folder / file
            try:
                if file.endswith(".safetensors"):
                    self._open[file] = SafetensorsFile(path)
                else:
                    self._open[file] = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable weight file is a bad input
                raise HetronError(f"{path} is not a readable weight file ({type(exc).__name__}: {exc})") from None
        return self._open[file]

    def names(self) -> set[str]:
        return set(self.file_of)

    def get(self, name: str) -> torch.Tensor:
        file = self.file_of.get(name)
        if file is None:
            raise HetronError(f"{self.folder}: tensor {name!r} is missing from the weights")
        handle = self._handle(file)
        return handle.get_tensor(name) if hasattr(handle, "get_tensor") else handle[name]

    def dtype(self) -> torch.dtype:
        """The dtype most of the weights are stored in."""
        first = next(iter(sorted(self.file_of)))
        return self.get(first).dtype


class SafetensorsShardWriter:
    """Tensors added in order go to model-0000k-of-0000n.safetensors files of at most
    `max_shard_bytes` each (one tensor larger than that gets a file of its own), plus the index; a
    model that fits in one shard is a single model.safetensors, as transformers writes it."""

    def __init__(self, folder: Path, max_shard_bytes: int):
        self.folder = Path(folder)
        self.max_shard_bytes = max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.written: list[tuple[str, list[str]]] = []  # (temporary file name, tensor names)
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self.pending[name] = tensor.detach().contiguous().clone()
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        file = f"shard-{len(self.written):05d}.safetensors"
        save_file(self.pending, str(self.folder / file), metadata={"format": "pt"})
        self.written.append((file, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> list[str]:
        """Renames the shards to their final names, writes the index; returns the file names."""
        if self.pending or not self.written:
            self._flush()
        count = len(self.written)
        if count == 1:
            (self.folder / self.written[0][0]).rename(self.folder / "model.safetensors")
            return ["model.safetensors"]
        weight_map, names = {}, []
        for i, (file, tensors) in enumerate(self.written):
            final = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            (self.folder / file).rename(self.folder / final)
            weight_map |= {t: final for t in tensors}
            names.append(final)
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return names + [SAFETENSORS_INDEX]
