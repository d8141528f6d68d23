"""Deterministic Llama-shaped sharded safetensors checkpoints of any size.

::

    out_dir/
      config.json                              LlamaConfig-like, sized to reach total_bytes
      model-00001-of-0000N.safetensors         seeded random values: finite, never zero
      ...
      model.safetensors.index.json             {"metadata": {"total_size": ...}, "weight_map": {...}}
      .digests.json                            sha256 of each file, computed while writing (not a repo file)

A single shard is written as ``model.safetensors`` without an index, as transformers does.
Memory stays bounded: tensors are generated and written in 16 MiB chunks. Values come from
``numpy.random.default_rng([seed, tensor_index])`` so they depend on the seed and the tensor, not on
the sharding. CLI: ``python -m tests.data.synth OUT_DIR --size 1G --shards 4``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK = 16 << 20
DTYPES = {  # name -> (safetensors dtype, itemsize, numpy uint view, keep mask, or mask)
    "bfloat16": ("BF16", 2, np.uint16, 0x80FF, 0x3E00),  # exponent 124/125: |x| in [1/8, 1/2)
    "float16": ("F16", 2, np.uint16, 0x87FF, 0x3000),  # exponent 12/13:  |x| in [1/8, 1/2)
    "float32": ("F32", 4, np.uint32, 0x80FFFFFF, 0x3E000000),
}
DIGEST_SIDECAR = ".digests.json"


@dataclass(frozen=True)
class LlamaShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        kv = self.num_key_value_heads * self.head_dim
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
        for n in range(self.num_hidden_layers):
            p = f"model.layers.{n}."
            out += [
                (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (i, h)),
                (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i)),
                (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,)),
            ]
        out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
        return out

    def config(self, dtype: str) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": dtype,
        }


def _shape_for(h: int, layers: int, vocab: int) -> LlamaShape:
    head_dim = 128 if h >= 1024 else 64 if h >= 128 else h
    heads = max(1, h // head_dim)
    kv_heads = max(1, heads // 4)
    inter = max(64, int(round(h * 2.6875 / 64)) * 64)
    return LlamaShape(h, inter, layers, heads, kv_heads, vocab)


def choose_shape(total_bytes: int, itemsize: int) -> LlamaShape:
    """The widest Llama shape with at least 4 layers (2 for tiny sizes) whose parameters fill ``total_bytes``;
    the vocabulary absorbs the remainder so the total lands within a few rows of the target."""
    params = total_bytes // itemsize
    for h in (8192, 5120, 4096, 3072, 2048, 1024, 512, 256, 128, 64, 32, 16):
        probe = _shape_for(h, 1, 1)
        per_layer = sum(math.prod(s) for _, s in probe.tensors()) - 2 * h - h  # minus embed, head, norm
        min_layers = 8 if h >= 1024 else 4 if h > 64 else 2
        for layers in (int((params * 0.85) // per_layer), min_layers):
            if layers < min_layers:
                continue
            vocab = (params - layers * per_layer - h) // (2 * h)
            if vocab >= 256 or (h <= 16 and vocab >= 1):
                return _shape_for(h, layers, int(vocab))
    raise ValueError(f"total_bytes={total_bytes} is too small for a Llama-shaped checkpoint")


def _fill(rng: np.random.Generator, nbytes: int, spec: tuple) -> memoryview:
    _, _, utype, keep, force = spec
    words = rng.integers(0, np.iinfo(np.uint64).max, size=(nbytes + 7) // 8, dtype=np.uint64, endpoint=True)
    arr = words.view(utype)[: nbytes // np.dtype(utype).itemsize]
    arr &= utype(keep)
    arr |= utype(force)
    return memoryview(arr).cast("B")


def _plan_shards(sizes: list[int], shards: int | None, max_shard_size: int | None) -> list[list[int]]:
    total = sum(sizes)
    groups: list[list[int]] = [[]]
    if shards:
        shards = min(shards, len(sizes))
        cum = 0
        by_shard: dict[int, list[int]] = {}
        for idx, size in enumerate(sizes):
            by_shard.setdefault(min(shards - 1, int((cum + size / 2) * shards // total)), []).append(idx)
            cum += size
        groups = [g for _, g in sorted(by_shard.items())]
        while len(groups) < shards:  # split the heaviest splittable group until every shard has tensors
            k = max((j for j, g in enumerate(groups) if len(g) > 1), key=lambda j: sum(sizes[i] for i in groups[j]))
            g, half, acc, cut = groups[k], sum(sizes[i] for i in groups[k]) / 2, 0, 1
            for pos, i in enumerate(g[:-1], start=1):
                acc += sizes[i]
                cut = pos
                if acc >= half:
                    break
            groups[k : k + 1] = [g[:cut], g[cut:]]
        return groups
    limit = max_shard_size or 5_000_000_000
    acc = 0
    for idx, size in enumerate(sizes):
        if groups[-1] and acc + size > limit:
            groups.append([])
            acc = 0
        groups[-1].append(idx)
        acc += size
    return groups


def _write_safetensors(path: Path, items: list[tuple[int, str, tuple[int, ...]]], dtype: str, seed: int) -> str:
    spec = DTYPES[dtype]
    st_dtype, itemsize = spec[0], spec[1]
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for _, name, shape in items:
        n = math.prod(shape) * itemsize
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)
    h = hashlib.sha256()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for piece in (struct.pack("<Q", len(hbytes)), hbytes):
            f.write(piece)
            h.update(piece)
        for index, _, shape in items:
            rng = np.random.default_rng([seed, index])
            left = math.prod(shape) * itemsize
            while left:
                n = min(CHUNK, left)
                data = _fill(rng, n, spec)
                f.write(data)
                h.update(data)
                left -= n
    os.replace(tmp, path)
    return h.hexdigest()


def make_llama(
    out_dir: str | os.PathLike,
    total_bytes: int,
    *,
    shards: int | None = None,
    max_shard_size: int | None = None,
    dtype: str = "bfloat16",
    seed: int = 0,
) -> list[Path]:
    """Write a Llama-shaped checkpoint of about ``total_bytes`` of tensor data; returns the files written.

    >>> files = make_llama("/tmp/m", 4 << 20, shards=4)   # doctest: +SKIP
    >>> [p.name for p in files]                            # doctest: +SKIP
    ['config.json', 'model-00001-of-00004.safetensors', ..., 'model.safetensors.index.json']
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    itemsize = DTYPES[dtype][1]
    shape = choose_shape(int(total_bytes), itemsize)
    tensors = shape.tensors()
    sizes = [math.prod(s) * itemsize for _, s in tensors]
    groups = _plan_shards(sizes, shards, max_shard_size)
    written: list[Path] = []
    digests: dict[str, str] = {}

    config = out / "config.json"
    config.write_text(json.dumps(shape.config(dtype), indent=2) + "\n")
    written.append(config)
    weight_map: dict[str, str] = {}
    for k, group in enumerate(groups, start=1):
        name = "model.safetensors" if len(groups) == 1 else f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        items = [(i, tensors[i][0], tensors[i][1]) for i in group]
        digests[name] = _write_safetensors(out / name, items, dtype, seed)
        written.append(out / name)
        weight_map.update({t: name for _, t, _ in items})
    if len(groups) > 1:
        index = out / "model.safetensors.index.json"
        body = {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}
        index.write_text(json.dumps(body, indent=2) + "\n")
        written.append(index)
    sidecar = {}
    for p in written:
        st = p.stat()
        sha = digests.get(p.name) or hashlib.sha256(p.read_bytes()).hexdigest()
        sidecar[p.name] = {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    (out / DIGEST_SIDECAR).write_text(json.dumps(sidecar, indent=1))
    return written


def make_llama_repo(out_dir: str | os.PathLike, total_bytes: int, **kwargs) -> dict[str, Path]:
    """:func:`make_llama`, returned as ``{repo path: file}`` ready for ``HubRepo(repo_id, files)``."""
    return {p.name: p for p in make_llama(out_dir, total_bytes, **kwargs)}


def parse_size(text: str) -> int:
    """``"1G"`` -> 1073741824 (binary units: K, M, G, T; a trailing ``B``/``iB`` is allowed)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(float(t))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.data.synth", description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--size", default="64M", help="tensor bytes, e.g. 20M, 1G (binary units)")
    ap.add_argument("--shards", type=int, default=None)
    ap.add_argument("--max-shard-size", default=None)
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    files = make_llama(
        a.out_dir, parse_size(a.size), shards=a.shards,
        max_shard_size=parse_size(a.max_shard_size) if a.max_shard_size else None, dtype=a.dtype, seed=a.seed,
    )
    for p in files:
        print(p)


if __name__ == "__main__":
    main()
