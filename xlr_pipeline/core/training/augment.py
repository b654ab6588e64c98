"""SALT-style self-augmentation of English training captions, for a frozen text encoder.

SALT (Wang et al., arXiv 2309.10891) improves zero-shot cross-lingual transfer without parallel data or
dictionaries by (1) code-switching: replacing tokens with other-language tokens that the multilingual model
*itself* considers equivalent, and (2) embedding mixup between original and code-switched inputs.
Our encoder is frozen and sentence-level, so the adaptation is:

1. **Self-induced word translations.** English words of the training captions and the most frequent words
   of each augmentation language (`wordfreq`'s monolingual lists — no parallel text, no dictionary) are
   embedded with the frozen encoder; each language's word vectors are centred by their own mean; an English
   word is translated to its nearest neighbour when the two are *mutual* nearest neighbours (the encoder's
   own proposal, filtered for precision).
2. **Code-switching.** A copy of each English training caption in which each translatable word is replaced
   with probability `switch_ratio` by its translation in one randomly drawn language.
3. **Embedding mixup.** The training text vector of a code-switched copy is λ·e(original) + (1−λ)·e(switched),
   λ ~ Beta(α, α), renormalised; it is paired with the original caption's image.

Controls: each code-switched copy has two English twins with the *same* words changed. In the first the words
are replaced by their nearest **English** neighbour in the encoder's space (`english_substitutes`: the same
operation as SALT, only the substitutes' language differs — the fair control); in the second they are deleted
(`english_mixup`). Mixup with a twin has the same captions, the same number of extra rows and the same mixing
weights, but no other language: what SALT adds beyond the substitutes control is the other languages.
Copies are drawn per seed, so seed-to-seed variance includes the augmentation draw.

Only English train-split captions enter here; captions of other languages (and all test captions) never do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

WORD = re.compile(r"[^\W\d_]+")
SPACED_WORD = re.compile(r"\s*[^\W\d_]+")  # the same words as WORD, with the whitespace before them
Encode = Callable[[list[str]], np.ndarray]


def english_words(captions: Sequence[str]) -> list[str]:
    return sorted({word for caption in captions for word in WORD.findall(caption.lower()) if len(word) > 1})


def frequent_words(language: str, count: int) -> list[str]:
    """The language's most frequent words from `wordfreq` (monolingual, no pairs), letters only."""
    import wordfreq

    return [word for word in wordfreq.top_n_list(language, count * 2) if WORD.fullmatch(word)][:count]


def _centred_unit(vectors: np.ndarray) -> np.ndarray:
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)


def mutual_nearest_translations(
    source_words: Sequence[str], source_vectors: np.ndarray, target_words: Sequence[str], target_vectors: np.ndarray
) -> dict[str, str]:
    """source word → target word where each is the other's nearest neighbour (cosine after centring)."""
    similarity = _centred_unit(source_vectors) @ _centred_unit(target_vectors).T
    forward = similarity.argmax(axis=1)
    backward = similarity.argmax(axis=0)
    return {source_words[i]: target_words[j] for i, j in enumerate(forward) if backward[j] == i}


def nearest_other_words(words: Sequence[str], pool: Sequence[str], pool_vectors: np.ndarray) -> dict[str, str]:
    """Each of `words` (all in `pool`) → its nearest *other* word of `pool` (cosine after centring the pool)."""
    unit = _centred_unit(pool_vectors)
    row_of = {word: i for i, word in enumerate(pool)}
    rows = np.array([row_of[word] for word in words], dtype=np.int64)
    similarity = unit[rows] @ unit.T
    similarity[np.arange(len(rows)), rows] = -np.inf
    return {word: pool[j] for word, j in zip(words, similarity.argmax(axis=1))}


@dataclass(frozen=True)
class Lexicon:
    """English word → {language: translation}, induced from the encoder alone; and English word → its nearest
    other English word (`substitutes`, the control's replacements)."""

    translations: dict[str, dict[str, str]]
    substitutes: dict[str, str] = field(default_factory=dict)

    @property
    def languages(self) -> list[str]:
        return sorted({language for options in self.translations.values() for language in options})

    def size(self, language: str) -> int:
        return sum(language in options for options in self.translations.values())

    def to_frame(self) -> pl.DataFrame:
        """One row per (English word, language, translation) and per (English word, "en", substitute) with
        `relation` "translation" or "substitute": how the lexicon is stored."""
        rows = [
            (english, language, foreign, "translation")
            for english, options in sorted(self.translations.items())
            for language, foreign in sorted(options.items())
        ]
        rows += [(english, "en", other, "substitute") for english, other in sorted(self.substitutes.items())]
        schema = {"english": pl.String, "language": pl.String, "translation": pl.String, "relation": pl.String}
        return pl.DataFrame(rows, schema=schema, orient="row")

    @classmethod
    def from_frame(cls, frame: pl.DataFrame) -> Lexicon:
        translations: dict[str, dict[str, str]] = {}
        substitutes: dict[str, str] = {}
        for english, language, foreign, relation in frame.select(
            "english", "language", "translation", "relation"
        ).iter_rows():
            if relation == "substitute":
                substitutes[english] = foreign
            else:
                translations.setdefault(english, {})[language] = foreign
        return cls(translations, substitutes)


def induce_lexicon(
    captions: Sequence[str], languages: Sequence[str], words_per_language: int, encode: Encode
) -> Lexicon:
    """Translations into `languages` of the captions' English words, and each word's English substitute (its
    nearest neighbour among the caption words and English's `words_per_language` most frequent words)."""
    source = english_words(captions)
    source_vectors = encode(source)
    translations: dict[str, dict[str, str]] = {}
    for language in languages:
        target = frequent_words(language, words_per_language)
        for english, foreign in mutual_nearest_translations(source, source_vectors, target, encode(target)).items():
            translations.setdefault(english, {})[language] = foreign
    extra = sorted(set(frequent_words("en", words_per_language)) - set(source))
    pool_vectors = np.concatenate([source_vectors, encode(extra)]) if extra else source_vectors
    return Lexicon(translations, nearest_other_words(source, [*source, *extra], pool_vectors))


def language_means(languages: Sequence[str], words_per_language: int, encode: Encode) -> dict[str, np.ndarray]:
    """Each language's mean vector over its frequent words: a centroid from unpaired monolingual text."""
    return {language: encode(frequent_words(language, words_per_language)).mean(axis=0) for language in languages}


def shift_to_centroid(vectors: np.ndarray, own_mean: np.ndarray, reference_mean: np.ndarray) -> np.ndarray:
    """Per-language centring: move a language's vectors so its centroid lands on the reference centroid."""
    shifted = vectors - own_mean + reference_mean
    return (shifted / np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class SwitchedCopy:
    index: int  # of the original caption
    language: str
    switched: str  # translatable words replaced by their `language` translation
    english_control: str  # the same words deleted instead: a perturbed English copy
    english_substitute: str  # the same words replaced by their nearest English neighbour


@dataclass(frozen=True)
class Switch:
    """One switched word: its span in the original caption and its translation."""

    start: int
    end: int
    translation: str


def draw_switches(
    caption: str, lexicon: Lexicon, language: str, switch_ratio: float, rng: np.random.Generator
) -> list[Switch]:
    """Each translatable word of `caption` is switched with probability switch_ratio (one draw per
    translatable word, in order)."""
    switches = []
    for match in WORD.finditer(caption):
        options = lexicon.translations.get(match.group(0).lower(), {})
        if language in options and rng.random() < switch_ratio:
            switches.append(Switch(match.start(), match.end(), options[language]))
    return switches


def apply_switches(caption: str, switches: Sequence[Switch]) -> tuple[str, list[tuple[int, int]]]:
    """The switched caption and each translation's (start, end) in it."""
    parts, spans, at, length = [], [], 0, 0
    for switch in switches:
        parts.append(caption[at : switch.start])
        length += switch.start - at
        spans.append((length, length + len(switch.translation)))
        parts.append(switch.translation)
        length += len(switch.translation)
        at = switch.end
    parts.append(caption[at:])
    return "".join(parts), spans


def code_switch(
    caption: str, lexicon: Lexicon, language: str, switch_ratio: float, rng: np.random.Generator
) -> tuple[str, str, str]:
    """(switched caption, deletion control, substitution control): the deletion control deletes exactly the
    switched words, with the whitespace before each (where that leaves nothing, it is the unchanged caption); the
    substitution control replaces them by their English substitutes (a word without one stays)."""
    switches = draw_switches(caption, lexicon, language, switch_ratio, rng)
    deleted = {switch.start for switch in switches}
    control = SPACED_WORD.sub(
        lambda match: "" if match.end() - len(match.group(0).lstrip()) in deleted else match.group(0), caption
    ).strip()
    substitutions = [
        Switch(s.start, s.end, lexicon.substitutes.get(caption[s.start : s.end].lower(), caption[s.start : s.end]))
        for s in switches
    ]
    return apply_switches(caption, switches)[0], control or caption, apply_switches(caption, substitutions)[0]


def code_switched_copies(
    captions: Sequence[str], lexicon: Lexicon, switch_ratio: float, seed: int
) -> list[SwitchedCopy]:
    """One copy per caption that actually changed, in one randomly drawn language per caption."""
    rng = np.random.default_rng(seed)
    languages = lexicon.languages
    copies = []
    for index, caption in enumerate(captions):
        language = languages[rng.integers(len(languages))]
        switched, deletion, substitution = code_switch(caption, lexicon, language, switch_ratio, rng)
        if switched != caption:
            copies.append(SwitchedCopy(index, language, switched, deletion, substitution))
    return copies


def mixup(original: np.ndarray, switched: np.ndarray, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Row-wise λ·original + (1−λ)·switched with λ ~ Beta(α, α), renormalised to unit length."""
    weights = rng.beta(alpha, alpha, size=(len(original), 1)).astype(np.float32)
    mixed = weights * original + (1 - weights) * switched
    return (mixed / np.maximum(np.linalg.norm(mixed, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def keyword_texts(train_captions: pl.DataFrame) -> pl.DataFrame:
    """The `keywords` augmentation's extra texts: each training caption's keywords as one comma-separated text
    (`caption_id`, `image_id`, `text`), paired later with the caption's image; captions without keywords give none."""
    return train_captions.filter(pl.col("keywords") != "").select(
        "caption_id", "image_id", pl.col("keywords").str.replace_all(r" \| ", ", ").alias("text")
    )
