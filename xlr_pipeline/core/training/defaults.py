"""A dataset's default configuration, as its `dataset.toml` `[defaults]` table records it: the encoders and head
hyperparameters `xlr run` trains when no option says otherwise, and the grid run that chose them on validation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields

from xlr_pipeline.core.training.choices import CHAIN_AUGMENTATIONS
from xlr_pipeline.core.training.configs import ConfigError, HeadConfig

HEAD_FIELDS = frozenset(field.name for field in fields(HeadConfig))
MODEL_KEYS = ("image_model", "text_model")


class DefaultsError(ValueError):
    pass


@dataclass(frozen=True)
class LaneDefaults:
    image_model: str = ""  # empty: the project's default encoder
    text_model: str = ""
    head: tuple[tuple[str, object], ...] = ()  # HeadConfig fields that differ from HeadConfig's own defaults
    augmentation: str = ""  # extra training pairs, of CHAIN_AUGMENTATIONS (empty: none)
    chosen_by: str = ""  # the grid run whose validation choice this is (empty: stated, not chosen)

    @classmethod
    def from_table(cls, table: Mapping[str, object]) -> LaneDefaults:
        """From a `[defaults]` table; unknown keys and out-of-range values are refused, naming the key."""
        unknown = sorted(set(table) - HEAD_FIELDS - set(MODEL_KEYS) - {"chosen_by", "augmentation"})
        if unknown:
            raise DefaultsError(
                f"[defaults] has unknown keys {unknown}; known: encoders {list(MODEL_KEYS)}, chosen_by, "
                f"augmentation, and the head's {sorted(HEAD_FIELDS)}"
            )
        for key in (*MODEL_KEYS, "chosen_by", "augmentation"):
            if not isinstance(table.get(key, ""), str):
                raise DefaultsError(f"[defaults] {key} must be a string, not {table[key]!r}")
        if table.get("augmentation", "none") not in CHAIN_AUGMENTATIONS:
            raise DefaultsError(
                f"[defaults] augmentation must be one of {list(CHAIN_AUGMENTATIONS)}, not {table['augmentation']!r}"
            )
        head = {key: value for key, value in table.items() if key in HEAD_FIELDS}
        try:
            HeadConfig(**head)
        except (ConfigError, TypeError) as error:
            raise DefaultsError(f"[defaults] {error}") from None
        return cls(
            image_model=str(table.get("image_model", "")),
            text_model=str(table.get("text_model", "")),
            head=tuple(sorted(head.items())),
            chosen_by=str(table.get("chosen_by", "")),
            augmentation="" if table.get("augmentation", "none") == "none" else str(table["augmentation"]),
        )

    def head_config(self, overrides: Mapping[str, object]) -> HeadConfig:
        """The head this dataset trains: its defaults, then the options given (CLI, launchpad) on top; epochs given
        without steps replace a default step budget (steps would otherwise win)."""
        defaults = dict(self.head)
        if "epochs" in overrides and "steps" not in overrides:
            defaults.pop("steps", None)
        return HeadConfig(**{**defaults, **overrides})

    def as_toml(self) -> str:
        """The `[defaults]` table (values as TOML literals: JSON's strings and numbers are TOML's too)."""
        lines = ["[defaults]"]
        if self.chosen_by:
            lines.append(f"chosen_by = {json.dumps(self.chosen_by)}")
        lines += [f"{key} = {json.dumps(getattr(self, key))}" for key in MODEL_KEYS if getattr(self, key)]
        if self.augmentation:
            lines.append(f"augmentation = {json.dumps(self.augmentation)}")
        lines += [f"{key} = {json.dumps(value)}" for key, value in self.head]
        return "\n".join(lines) + "\n"


def with_defaults_table(declaration: str, defaults: LaneDefaults) -> str:
    """A `dataset.toml` text with its `[defaults]` table replaced by (or extended with) `defaults`; everything
    else kept as written. The table must be the file's last (what `xlr grid --adopt` writes)."""
    lines = declaration.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "[defaults]"), None)
    if start is not None:
        if any(line.strip().startswith("[") for line in lines[start + 1 :]):
            raise DefaultsError("[defaults] must be the last table of dataset.toml to be rewritten")
        lines = lines[:start]
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines) + "\n\n" + defaults.as_toml()
