"""Options that take one of a few names: one `Literal` each, shared by core, the launchpad Config and the CLI.

Kept free of heavy imports so the command line can offer the choices without loading torch.
"""

from typing import Literal, get_args

Objective = Literal["patr", "m3", "infonce"]
NegativeMining = Literal["all", "hardest"]
Architecture = Literal["linear", "mlp"]
Augmentation = Literal["none", "salt", "keywords"]

OBJECTIVES: tuple[str, ...] = get_args(Objective)
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
AUGMENTATIONS: tuple[str, ...] = get_args(Augmentation)
