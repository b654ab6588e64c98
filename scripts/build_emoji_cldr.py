"""Build the offline `emoji_cldr` benchmark into data/emoji_cldr/ from npm packages.

Images: Noto Emoji 64x64 PNGs from `emoji-datasource-google` (Apache-2.0 images, MIT package data).
Captions: the human-translated Unicode CLDR short names (`tts`) and keywords from
`cldr-annotations-full` / `cldr-annotations-derived-full` (Unicode License v3).

Only base emoji are kept (no skin-tone variants: near-duplicate images whose names differ only by the
tone). Flags are dropped (a flag's name is a country name no image encoder can read) and so is the
`Component` category (bare skin-tone swatches and hair parts). Gendered/age variants of one concept
(man/woman/person health worker, man/woman running, ...) form one *family*, and so do emoji whose English
names denote one concept (`family_groups`: "kiss" / "kiss: man, man", "cat" / "black cat", "men holding hands"
/ "people holding hands"); the train/validation/test split is decided per family from a hash of its key, so
near-duplicates never straddle two splits.

Usage:  python scripts/build_emoji_cldr.py [--node-modules DIR] [--out data/emoji_cldr]
Without --node-modules the packages are installed with npm into a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

NPM_PACKAGES = (
    "emoji-datasource-google@16",
    "cldr-annotations-full@48",
    "cldr-annotations-derived-full@48",
)
# XTD10 languages as ISO 639-1 codes; CLDR uses the same locale ids ("zh" is Simplified).
LANGUAGES = ("en", "de", "fr", "es", "it", "ja", "ko", "pl", "ru", "tr", "zh")
EXCLUDED_CATEGORIES = {"Flags", "Component"}
# Hash buckets of a family's key: [0, 0.30) test, [0.30, 0.45) English validation (tuning), the rest train.
TEST_FRACTION = 0.30
VALIDATION_FRACTION = 0.15

VARIATION_SELECTORS = {0xFE0E, 0xFE0F}
SKIN_TONES = set(range(0x1F3FB, 0x1F400))
HAIR_COMPONENTS = set(range(0x1F9B0, 0x1F9B4))
GENDER_SIGNS = {0x2640, 0x2642}
ZWJ = 0x200D
# Words naming who does something; "men holding hands" and "people holding hands" are one concept.
PERSON_WORDS = frozenset(
    {"man", "woman", "men", "women", "person", "people", "boy", "girl", "child", "old", "older", "adult"}
)
# Man/woman/person (and boy/girl/child, old man/old woman/older person) share one family slot.
PERSON_CLASSES = {
    0x1F468: "adult",
    0x1F469: "adult",
    0x1F9D1: "adult",
    0x1F466: "child",
    0x1F467: "child",
    0x1F9D2: "child",
    0x1F474: "older",
    0x1F475: "older",
    0x1F9D3: "older",
}


def cldr_key(codepoints: list[int]) -> str:
    """CLDR keys usually drop the variation selectors; strip them on both sides of the join."""
    return "".join(chr(cp) for cp in codepoints if cp not in VARIATION_SELECTORS)


def family_key(codepoints: list[int]) -> str:
    """Key shared by gender/age/hair variants of one emoji concept."""
    parts: list[str] = []
    for cp in codepoints:
        if cp in VARIATION_SELECTORS or cp in SKIN_TONES or cp in HAIR_COMPONENTS or cp in GENDER_SIGNS:
            continue
        parts.append(PERSON_CLASSES.get(cp, f"{cp:x}"))
    # Dropping a gender sign leaves dangling joiners ("1f3c3 200d" for man running).
    key = "-".join(parts).replace("-200d-200d", "-200d").strip("-")
    while key.endswith("-200d"):
        key = key[: -len("-200d")]
    # A lone sign (female sign, male sign) is its own family, not the empty one.
    return key or "-".join(f"{cp:x}" for cp in codepoints if cp not in VARIATION_SELECTORS)


def concept_of(english_name: str) -> tuple[str, ...]:
    """The words of a name before its ':' qualifier, without person words ("kiss: man, man" -> ("kiss",))."""
    words = re.findall(r"[\w'-]+", english_name.split(":")[0].lower())
    return tuple(word for word in words if word not in PERSON_WORDS)


def family_groups(family_keys: list[str], english_names: list[str]) -> list[str]:
    """Each emoji's family after merging near-duplicates: a shared codepoint family key, the same concept, or
    one concept being a word-suffix of another ("polar bear" joins "bear", "black cat" joins "cat").
    A merged family is named by the smallest codepoint key in it, so the name is stable across rebuilds."""
    parent = list(range(len(family_keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> None:
        parent[root(i)] = root(j)

    first_of: dict[tuple, int] = {}
    for i, (key, name) in enumerate(zip(family_keys, english_names)):
        for token in (("key", key), ("concept", concept_of(name))):
            join(i, first_of.setdefault(token, i))
    concepts = {concept: i for (kind, concept), i in first_of.items() if kind == "concept"}
    for concept, i in concepts.items():
        for start in range(1, len(concept)):
            if concept[start:] in concepts:
                join(i, concepts[concept[start:]])
    smallest: dict[int, str] = {}
    for i, key in enumerate(family_keys):
        smallest[root(i)] = min(smallest.get(root(i), key), key)
    return [smallest[root(i)] for i in range(len(family_keys))]


def split_of(family: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(family.encode("utf-8")).digest()[:8], "big") / 2**64
    if bucket < TEST_FRACTION:
        return "test"
    return "val" if bucket < TEST_FRACTION + VALIDATION_FRACTION else "train"


def load_annotations(node_modules: Path, language: str) -> dict[str, dict]:
    full = json.loads(
        (node_modules / f"cldr-annotations-full/annotations/{language}/annotations.json").read_text("utf-8")
    )
    derived = json.loads(
        (node_modules / f"cldr-annotations-derived-full/annotationsDerived/{language}/annotations.json").read_text(
            "utf-8"
        )
    )
    table: dict[str, dict] = {}
    for source in (full["annotations"]["annotations"], derived["annotationsDerived"]["annotations"]):
        for key, value in source.items():
            table.setdefault(cldr_key([ord(ch) for ch in key]), value)
    return table


def install_packages(target: Path) -> Path:
    subprocess.run(["npm", "init", "-y"], cwd=target, check=True, capture_output=True)
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", *NPM_PACKAGES], cwd=target, check=True)
    return target / "node_modules"


def clean_field(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def build(node_modules: Path, out: Path) -> dict[str, int]:
    emoji = json.loads((node_modules / "emoji-datasource-google/emoji.json").read_text("utf-8"))
    annotations = {lang: load_annotations(node_modules, lang) for lang in LANGUAGES}
    image_dir = node_modules / "emoji-datasource-google/img/google/64"

    rows = []
    for entry in sorted(emoji, key=lambda e: e["sort_order"]):
        if entry["category"] in EXCLUDED_CATEGORIES or not entry.get("has_img_google"):
            continue
        codepoints = [int(part, 16) for part in entry["unified"].split("-")]
        key = cldr_key(codepoints)
        names = {lang: annotations[lang].get(key) for lang in LANGUAGES}
        missing = [lang for lang, value in names.items() if not value or not value.get("tts")]
        if missing:
            raise SystemExit(f"emoji {entry['unified']} has no CLDR name in {missing}")
        rows.append(
            {
                "image_id": entry["image"].removesuffix(".png"),
                "image_file": entry["image"],
                "family": family_key(codepoints),
                "category": entry["category"],
                "subcategory": entry["subcategory"],
                "names": names,
            }
        )

    families = family_groups(
        [row["family"] for row in rows], [clean_field(row["names"]["en"]["tts"][0]) for row in rows]
    )
    for row, family in zip(rows, families):
        row["family"] = family
        row["split"] = split_of(family)

    staging = Path(tempfile.mkdtemp(prefix="emoji_cldr.", dir=out.parent))
    (staging / "images").mkdir()
    (staging / "captions").mkdir()
    for row in rows:
        shutil.copyfile(image_dir / row["image_file"], staging / "images" / row["image_file"])
    with open(staging / "split.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image_id", "split", "family", "category", "subcategory"])
        for row in rows:
            writer.writerow([row["image_id"], row["split"], row["family"], row["category"], row["subcategory"]])
    for lang in LANGUAGES:
        with open(staging / "captions" / f"{lang}.tsv", "w", newline="", encoding="utf-8") as handle:
            handle.write("image_id\tcaption\tkeywords\n")
            for row in rows:
                name = row["names"][lang]
                keywords = " | ".join(clean_field(k) for k in name.get("default", []))
                handle.write(f"{row['image_id']}\t{clean_field(name['tts'][0])}\t{keywords}\n")
    licences = staging / "licences"
    licences.mkdir()
    shutil.copyfile(node_modules / "emoji-datasource-google/LICENSE", licences / "emoji-datasource-MIT.txt")
    shutil.copyfile(node_modules / "cldr-annotations-full/LICENSE", licences / "UNICODE-LICENSE-V3.txt")
    for name in ("dataset.toml", "README.md"):
        if (out / name).exists():
            shutil.copyfile(out / name, staging / name)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return {
        "images": len(rows),
        **{split: sum(r["split"] == split for r in rows) for split in ("train", "val", "test")},
        "families": len({r["family"] for r in rows}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node-modules", type=Path, help="folder holding the three npm packages")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "emoji_cldr")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.node_modules:
        print(build(args.node_modules, args.out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(build(install_packages(Path(tmp)), args.out))


if __name__ == "__main__":
    main()
