"""Fine-tuning the top layers of the multilingual text encoder on English captions, with or without
self-augmentation inside the model.

SALT (Wang et al., arXiv 2309.10891) trains the multilingual language model itself on code-switched text with
embedding mixup. The text available to us holds only the paper's abstract and introduction, so this is our
reading of it, under its own name (`salt_in_model`), not the paper's equations:

- each training caption is, with probability `switch_probability`, replaced by a code-switched copy drawn
  afresh at every step (`draw_switches` with the lexicon `text_augmentations` induced from the frozen encoder:
  no parallel data, no dictionary);
- inside the model, the input embedding of every token of a switched word is mixed with the mean input
  embedding of the English word it replaces, `e = λ·e(translation token) + (1−λ)·ē(original word)`,
  λ ~ Beta(α, α) per caption, so the copy lies between the two languages in the model's own embedding space.

The control arm (`english`) trains the same layers with the same head, steps, batches and seed on the English
captions alone. Both train e5's top layers and a linear projection of text and image features with the
symmetric InfoNCE objective; only the changed encoder layers are kept: the grid trains its own heads on the
re-embedded captions, as it does for every frozen encoder.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from xlr_pipeline.core.models.e5_torch import QUERY_PREFIX, TrainableE5
from xlr_pipeline.core.training.augment import Lexicon, apply_switches, draw_switches
from xlr_pipeline.core.training.choices import FINETUNE_ARMS, FinetuneArm
from xlr_pipeline.core.training.configs import FinetuneConfig
from xlr_pipeline.core.training.losses import symmetric_info_nce_loss


@dataclass(frozen=True)
class MixedCaption:
    """A caption as the model reads it: its (possibly switched) text, and per switched word the
    (start, end) of the translation in `text` (prefix included) with the original word's mean embedding."""

    text: str
    spans: list[tuple[int, int]]
    originals: list[torch.Tensor]
    weight: float  # λ on the translation's own embeddings


def _word_embedding(model: TrainableE5, word: str) -> torch.Tensor:
    ids = model.tokenizer.ids(word)[1:-1]  # a word as it appears after a space; no <s> / </s>
    return model.bert.embeddings.word_embeddings.weight[ids].mean(dim=0).detach()


def switched_caption(
    model: TrainableE5, caption: str, lexicon: Lexicon, config: FinetuneConfig, rng: np.random.Generator
) -> MixedCaption:
    """The caption, or (with probability switch_probability) a code-switched copy in one random language."""
    if not lexicon.languages or rng.random() >= config.switch_probability:
        return MixedCaption(QUERY_PREFIX + caption, [], [], 1.0)
    language = lexicon.languages[rng.integers(len(lexicon.languages))]
    switches = draw_switches(caption, lexicon, language, config.switch_ratio, rng)
    text, spans = apply_switches(caption, switches)
    shift = len(QUERY_PREFIX)
    return MixedCaption(
        QUERY_PREFIX + text,
        [(start + shift, end + shift) for start, end in spans],
        [_word_embedding(model, caption[s.start : s.end]) for s in switches],
        float(rng.beta(config.mixup_alpha, config.mixup_alpha)),
    )


def mixed_inputs(model: TrainableE5, captions: Sequence[MixedCaption]) -> dict[str, torch.Tensor]:
    """Token embeddings of a batch with every switched word's tokens mixed with the original word's embedding.

    Token offsets come from the tokenizer; a caption whose normalisation changed its length (rare characters)
    keeps its switched tokens unmixed."""
    batch = model.tokenizer.batch([caption.text for caption in captions])
    embeds = model.bert.embeddings.word_embeddings(batch["input_ids"]).detach().clone()
    for row, caption in enumerate(captions):
        offsets = model.tokenizer.offsets(caption.text)
        if offsets is None:
            continue
        for (start, end), original in zip(caption.spans, caption.originals):
            tokens = [i for i, (a, b) in enumerate(offsets, start=1) if a < end and b > start]  # +1: <s> first
            embeds[row, tokens] = caption.weight * embeds[row, tokens] + (1 - caption.weight) * original
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "inputs_embeds": embeds}


@dataclass(frozen=True)
class FinetuneResult:
    changed: dict[str, torch.Tensor]  # the trained encoder parameters (state-dict names of TrainableE5)
    losses: list[float]
    steps: int

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.changed, buffer)
        return buffer.getvalue()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]


def finetune(
    model: TrainableE5,
    captions: Sequence[str],
    image_features: np.ndarray,
    image_ids: np.ndarray,
    arm: FinetuneArm,
    lexicon: Lexicon,
    config: FinetuneConfig,
) -> FinetuneResult:
    """Train `model`'s top `trainable_layers` layers (in place) and a projection head for `config.steps` steps."""
    if arm not in FINETUNE_ARMS:
        raise ValueError(f"unknown fine-tuning arm {arm!r}; known: {list(FINETUNE_ARMS)}")
    if len(captions) != len(image_features) or len(captions) < 2:
        raise ValueError(
            f"need >= 2 captions with one image each, got {len(captions)} captions and {len(image_features)} images"
        )
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    layers = model.bert.encoder.layer
    trainable = {f"bert.encoder.layer.{i}." for i in range(len(layers) - config.trainable_layers, len(layers))}
    for name, parameter in model.named_parameters():
        parameter.requires_grad = any(name.startswith(prefix) for prefix in trainable)
    images = torch.tensor(image_features, dtype=torch.float32)
    images = (images - images.mean(0)) / images.std(0).clamp(min=1e-6)
    hidden = model.bert.config.hidden_size
    text_projection, image_projection = (
        nn.Linear(hidden, config.embed_dim),
        nn.Linear(images.shape[1], config.embed_dim),
    )
    optimiser = torch.optim.AdamW(
        [
            {"params": [p for p in model.parameters() if p.requires_grad], "lr": config.encoder_learning_rate},
            {
                "params": [*text_projection.parameters(), *image_projection.parameters()],
                "lr": config.head_learning_rate,
            },
        ]
    )
    _, groups = np.unique(image_ids, return_inverse=True)
    group_ids = torch.from_numpy(groups)
    no_switching = Lexicon({})
    model.train()
    losses = []
    for _ in range(config.steps):
        batch = rng.choice(len(captions), size=min(config.batch_size, len(captions)), replace=False)
        texts = [
            switched_caption(model, captions[i], lexicon if arm == "salt_in_model" else no_switching, config, rng)
            for i in batch
        ]
        text = nn.functional.normalize(text_projection(model(**mixed_inputs(model, texts))), dim=-1)
        image = nn.functional.normalize(image_projection(images[batch]), dim=-1)
        loss = symmetric_info_nce_loss(text, image, group_ids[batch], config.temperature)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.item()))
    model.eval()
    changed = {
        name: tensor.detach().clone()
        for name, tensor in model.state_dict().items()
        if any(name.startswith(p) for p in trainable)
    }
    return FinetuneResult(changed, losses, config.steps)
