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


MEMBER_KEYS = frozenset(MODEL_KEYS) | HEAD_FIELDS - {"hubness", "hubness_parameter"}


@dataclass(frozen=True)
class EnsembleMember:
    """A further member of a score ensemble: its encoder pair and the head values it trains with."""

    text_model: str
    image_model: str
    head: tuple[tuple[str, object], ...] = ()

    @classmethod
    def from_table(cls, table: object, number: int) -> EnsembleMember:
        if not isinstance(table, Mapping):
            raise DefaultsError(f"[defaults] ensemble member {number} must be a table, not {table!r}")
        unknown = sorted(set(table) - MEMBER_KEYS)
        missing = [key for key in MODEL_KEYS if not isinstance(table.get(key), str) or not table[key]]
        if unknown or missing:
            raise DefaultsError(
                f"[defaults] ensemble member {number}: unknown keys {unknown}, encoders missing {missing}; a member "
                f"names {list(MODEL_KEYS)} and may set the head's {sorted(MEMBER_KEYS - set(MODEL_KEYS))}"
            )
        head = _head_values(table, f"[defaults] ensemble member {number}:")
        return cls(str(table["text_model"]), str(table["image_model"]), tuple(sorted(head.items())))

    def as_toml(self) -> str:
        """One inline table (TOML literals: JSON's strings and numbers are TOML's too)."""
        values = [("text_model", self.text_model), ("image_model", self.image_model), *self.head]
        return "{ " + ", ".join(f"{key} = {json.dumps(value)}" for key, value in values) + " }"


def _head_values(table: Mapping[str, object], where: str) -> dict[str, object]:
    """The head's fields of a table, checked against their ranges (the error names `where`)."""
    head = {key: value for key, value in table.items() if key in HEAD_FIELDS}
    try:
        HeadConfig(**head)
    except (ConfigError, TypeError) as error:
        raise DefaultsError(f"{where} {error}") from None
    return head


def _configured(head: Mapping[str, object], overrides: Mapping[str, object]) -> HeadConfig:
    """`head`'s values with the options given on top; epochs given without steps replace a stated step budget
    (steps would otherwise win)."""
    values = dict(head)
    if "epochs" in overrides and "steps" not in overrides:
        values.pop("steps", None)
    return HeadConfig(**{**values, **overrides})


@dataclass(frozen=True)
class LaneDefaults:
    image_model: str = ""  # empty: the project's default encoder
    text_model: str = ""
    head: tuple[tuple[str, object], ...] = ()  # HeadConfig fields that differ from HeadConfig's own defaults
    augmentation: str = ""  # extra training pairs, of CHAIN_AUGMENTATIONS (empty: none)
    chosen_by: str = ""  # the grid run whose validation choice this is (empty: stated, not chosen)
    # Further members of a score ensemble with the encoders and head above (empty: one head), and the first
    # member's share of the score with two members (None: equal weights; `core/scoring/ensemble.py`).
    ensemble: tuple[EnsembleMember, ...] = ()
    ensemble_share: float | None = None

    @classmethod
    def from_table(cls, table: Mapping[str, object]) -> LaneDefaults:
        """From a `[defaults]` table; unknown keys and out-of-range values are refused, naming the key."""
        unknown = sorted(
            set(table) - HEAD_FIELDS - set(MODEL_KEYS) - {"chosen_by", "augmentation", "ensemble", "ensemble_share"}
        )
        if unknown:
            raise DefaultsError(
                f"[defaults] has unknown keys {unknown}; known: encoders {list(MODEL_KEYS)}, chosen_by, "
                f"augmentation, ensemble, ensemble_share, and the head's {sorted(HEAD_FIELDS)}"
            )
        for key in (*MODEL_KEYS, "chosen_by", "augmentation"):
            if not isinstance(table.get(key, ""), str):
                raise DefaultsError(f"[defaults] {key} must be a string, not {table[key]!r}")
        if table.get("augmentation", "none") not in CHAIN_AUGMENTATIONS:
            raise DefaultsError(
                f"[defaults] augmentation must be one of {list(CHAIN_AUGMENTATIONS)}, not {table['augmentation']!r}"
            )
        head = _head_values(table, "[defaults]")
        members = table.get("ensemble", [])
        if not isinstance(members, list):
            raise DefaultsError(f"[defaults] ensemble must be a list of member tables, not {members!r}")
        ensemble = tuple(EnsembleMember.from_table(member, number) for number, member in enumerate(members, start=2))
        share = table.get("ensemble_share")
        if share is not None and (len(ensemble) != 1 or not isinstance(share, float) or not 0.0 < share < 1.0):
            raise DefaultsError(
                f"[defaults] ensemble_share is the first member's share of a two-member ensemble, in (0, 1); "
                f"got {share!r} with {len(ensemble) + 1} members"
            )
        if ensemble and (not table.get("image_model") or not table.get("text_model")):
            raise DefaultsError("[defaults] with an ensemble names the first member's image_model and text_model")
        if ensemble and (table.get("augmentation", "none") != "none" or table.get("hubness", "none") != "none"):
            raise DefaultsError(
                "[defaults] an ensemble trains without augmentation and ranks without hubness reduction"
            )
        return cls(
            image_model=str(table.get("image_model", "")),
            text_model=str(table.get("text_model", "")),
            head=tuple(sorted(head.items())),
            chosen_by=str(table.get("chosen_by", "")),
            augmentation="" if table.get("augmentation", "none") == "none" else str(table["augmentation"]),
            ensemble=ensemble,
            ensemble_share=share,
        )

    def head_config(self, overrides: Mapping[str, object]) -> HeadConfig:
        """The head this dataset trains (an ensemble's first member): its defaults, then the options given (CLI,
        launchpad) on top."""
        return _configured(dict(self.head), overrides)

    def member_configs(self, overrides: Mapping[str, object]) -> list[HeadConfig]:
        """Every ensemble member's head, the first's included, each with the options given on top."""
        return [self.head_config(overrides), *(_configured(dict(member.head), overrides) for member in self.ensemble)]

    def check_ensemble_options(self, given: Mapping[str, object]) -> None:
        """Refuse the options an ensemble cannot train with (its members are trained heads, on pairs only, ranked
        without hubness reduction), naming them; nothing to refuse for one head."""
        refused = {
            name: value
            for name, value in given.items()
            if (name in ("hubness", "augmentation") and value != "none")
            or (name, value) == ("architecture", "identity")
        }
        if self.ensemble and refused:
            raise DefaultsError(
                f"the dataset's default is a score ensemble, which cannot train with {refused}; to train one head "
                "with these options, name its encoders (--text-model, --image-model)"
            )

    def encoder_pairs(self) -> list[tuple[str, str]]:
        """(text model, image model) of every member, the first's included."""
        return [(self.text_model, self.image_model), *((m.text_model, m.image_model) for m in self.ensemble)]

    def joined_encoders(self) -> tuple[str, str]:
        """The (text, image) model ids an ensemble embeds with: each modality's distinct encoders joined in member
        order (`core/models/joined.py`); for one head, its own encoders."""
        from xlr_pipeline.core.models.joined import joined_model_id

        pairs = self.encoder_pairs()
        return (
            joined_model_id(list(dict.fromkeys(text for text, _ in pairs))),
            joined_model_id(list(dict.fromkeys(image for _, image in pairs))),
        )

    def as_toml(self) -> str:
        """The `[defaults]` table (values as TOML literals: JSON's strings and numbers are TOML's too)."""
        lines = ["[defaults]"]
        if self.chosen_by:
            lines.append(f"chosen_by = {json.dumps(self.chosen_by)}")
        lines += [f"{key} = {json.dumps(getattr(self, key))}" for key in MODEL_KEYS if getattr(self, key)]
        if self.augmentation:
            lines.append(f"augmentation = {json.dumps(self.augmentation)}")
        lines += [f"{key} = {json.dumps(value)}" for key, value in self.head]
        if self.ensemble:
            lines += ["ensemble = [", *(f"    {member.as_toml()}," for member in self.ensemble), "]"]
        if self.ensemble_share is not None:
            lines.append(f"ensemble_share = {json.dumps(self.ensemble_share)}")
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
