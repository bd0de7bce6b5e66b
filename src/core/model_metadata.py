"""What a model is, read from its files without loading it: architecture,
parameter count, quantization, context length, embedding size, whether it
has a chat template, and what it can do (chat, tools, reasoning,
embeddings).

A `.gguf`'s header and tensor table are read in place (the weights never
are; the gguf package names the types); a model folder from
config.json, tokenizer_config.json and the safetensors headers. Readings
are cached by path, size and modification time: listing models stays cheap.
"""
from __future__ import annotations

import json
import mmap
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from loguru import logger

# architectures that embed and do not chat (llama.cpp's names, and Hugging Face's model_type)
_ENCODERS = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3",
             "modern-bert", "roberta", "xlm-roberta", "t5encoder", "neo-bert", "modernbert"}
_REASONING_MARKS = ("<think>", "enable_thinking", "reasoning_content", "<|channel|>")


def read_metadata(path: Path) -> Optional[dict[str, Any]]:
    """The model's description, or None when its files cannot be read as a model."""
    try:
        stat = path.stat()
    except OSError:
        return None
    if path.is_dir():
        newest = max((f.stat().st_mtime_ns for f in path.iterdir() if f.is_file()), default=0)
        return _read(str(path), newest, 0)
    return _read(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=256)
def _read(path: str, mtime_ns: int, size: int) -> Optional[dict[str, Any]]:
    try:
        return _folder(Path(path)) if Path(path).is_dir() else _gguf(Path(path))
    except Exception as exc:  # a truncated or foreign file is described as unreadable
        logger.debug("No metadata in {}: {}", path, exc)
        return None


def _gguf(path: Path) -> dict[str, Any]:
    from gguf import LlamaFileType

    fields, parameters = read_gguf_header(path)
    arch = fields.get("general.architecture") or ""
    file_type = fields.get("general.file_type")
    try:
        quantization = LlamaFileType(file_type).name.removeprefix("MOSTLY_") \
            if file_type is not None else None
    except ValueError:
        quantization = None
    template = fields.get("tokenizer.chat_template")
    encoder = arch in _ENCODERS or f"{arch}.pooling_type" in fields
    return _described(
        architecture=arch, name=fields.get("general.name"), parameters=parameters,
        quantization=quantization, context_length=fields.get(f"{arch}.context_length"),
        embedding_length=fields.get(f"{arch}.embedding_length"), template=template,
        encoder=encoder, file_format="gguf")


# GGUF scalar value types (gguf.GGUFValueType) -> struct formats
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
_STRING, _ARRAY = 8, 9


def read_gguf_header(path: Path) -> tuple[dict[str, Any], int]:
    """A GGUF file's key-value metadata (arrays left out: a vocabulary is
    skipped, not read) and its parameter count, from the tensor table.

    The gguf package's GGUFReader reads every array into numpy: 15 s for a
    262k-token vocabulary, too slow for a model listing; this walks the
    same layout (gguf.GGUFValueType) and seeks over arrays."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"GGUF":
            raise ValueError("not a GGUF file")
        _version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
        pos = 24
        fields: dict[str, Any] = {}

        def string(at: int) -> tuple[str, int]:
            (length,) = struct.unpack_from("<Q", data, at)
            return data[at + 8:at + 8 + length].decode("utf-8", "replace"), at + 8 + length

        def skip(kind: int, at: int) -> int:
            if kind in _SCALARS:
                return at + struct.calcsize(_SCALARS[kind])
            if kind == _STRING:
                return at + 8 + struct.unpack_from("<Q", data, at)[0]
            item, count = struct.unpack_from("<IQ", data, at)
            at += 12
            if item in _SCALARS:
                return at + count * struct.calcsize(_SCALARS[item])
            for _ in range(count):
                at = skip(item, at)
            return at

        for _ in range(n_kv):
            key, pos = string(pos)
            (kind,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if kind in _SCALARS:
                (fields[key],) = struct.unpack_from("<" + _SCALARS[kind], data, pos)
            elif kind == _STRING:
                fields[key] = string(pos)[0]
            pos = skip(kind, pos)
        parameters = 0
        for _ in range(n_tensors):
            _name, pos = string(pos)
            (n_dims,) = struct.unpack_from("<I", data, pos)
            count = 1
            for dim in struct.unpack_from(f"<{n_dims}Q", data, pos + 4):
                count *= dim
            parameters += count
            pos += 4 + 8 * n_dims + 4 + 8  # dims, then the type and the data offset
        return fields, parameters


def _folder(path: Path) -> dict[str, Any]:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config") or config  # multimodal models nest the language model's
    template = _folder_template(path)
    quant = config.get("quantization_config") or config.get("quantization") or {}
    quantization = (quant.get("quant_method") or (f"{quant['bits']}-bit" if quant.get("bits")
                                                  else None)) if isinstance(quant, dict) else None
    model_type = config.get("model_type") or text.get("model_type") or ""
    architectures = config.get("architectures") or []
    return _described(
        architecture=model_type or (architectures[0] if architectures else ""),
        name=config.get("_name_or_path") or path.name,
        parameters=_safetensors_parameters(path), quantization=quantization
        or str(config.get("torch_dtype") or config.get("dtype") or "") or None,
        context_length=text.get("max_position_embeddings") or text.get("n_positions"),
        embedding_length=text.get("hidden_size") or text.get("d_model"), template=template,
        encoder=model_type in _ENCODERS or any("ForMaskedLM" in a or a.endswith("Model")
                                               for a in architectures),
        file_format="safetensors" if any(path.glob("*.safetensors")) else "folder")


def _described(*, architecture: str, name: Optional[str], parameters: Optional[int],
               quantization: Optional[str], context_length: Any, embedding_length: Any,
               template: Optional[str], encoder: bool, file_format: str) -> dict[str, Any]:
    template = template or ""
    capabilities = ["embeddings"] if encoder else ["completion"]
    if template and not encoder:
        capabilities.append("chat")
        if "tools" in template:
            capabilities.append("tools")
        if any(mark in template for mark in _REASONING_MARKS):
            capabilities.append("reasoning")
    return {"format": file_format, "architecture": architecture or None, "name": name,
            "parameters": parameters or None, "parameter_size": _human(parameters),
            "quantization": quantization,
            "context_length": int(context_length) if context_length else None,
            "embedding_length": int(embedding_length) if embedding_length else None,
            "chat_template": bool(template), "capabilities": capabilities}


def _folder_template(path: Path) -> Optional[str]:
    for name in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json"):
        file = path / name
        if not file.is_file():
            continue
        text = file.read_text(encoding="utf-8")
        if name.endswith(".jinja"):
            return text
        template = json.loads(text).get("chat_template")
        if isinstance(template, list):  # named templates: their texts together
            template = " ".join(t.get("template", "") for t in template)
        if template:
            return template
    return None


def _safetensors_parameters(path: Path) -> Optional[int]:
    """Elements of every tensor, from each file's JSON header (8 bytes of length first)."""
    total = 0
    for file in path.glob("*.safetensors"):
        with file.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, tensor in header.items():
            if name != "__metadata__":
                count = 1
                for dim in tensor["shape"]:
                    count *= dim
                total += count
    return total or None


def _human(parameters: Optional[int]) -> Optional[str]:
    if not parameters:
        return None
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if parameters >= size:
            return f"{parameters / size:.{0 if parameters >= 100 * size else 1}f}{unit}"
    return str(parameters)
