"""Language codes: ISO 639-1 inside the pipeline, with aliases for what dataset files use."""

from __future__ import annotations

# ISO 639-1 codes (the full list, so a user's new language is recognised, not just XTD10's).
ISO_639_1 = frozenset(
    """aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de
    dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie
    ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg
    mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro
    ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty
    ug uk ur uz ve vi vo wa wo xh yi yo za zh zu""".split()
)

# Codes seen in dataset file names that are not ISO 639-1 (XTD10's STAIR file says `jp`).
ALIASES = {
    "jp": "ja",
    "cn": "zh",
    "zh-cn": "zh",
    "zh-hans": "zh",
    "kr": "ko",
    "gr": "el",
    "cz": "cs",
    "dk": "da",
    "ua": "uk",
    "iw": "he",
    "in": "id",
}


class UnknownLanguageError(ValueError):
    pass


def normalize_language(code: str, source: str = "") -> str:
    """Map a file's language code to ISO 639-1, or raise naming the source that used it."""
    lowered = code.strip().lower().replace("_", "-")
    iso = ALIASES.get(lowered, lowered)
    if iso not in ISO_639_1:
        where = f" in {source}" if source else ""
        raise UnknownLanguageError(
            f"unknown language code {code!r}{where}: use an ISO 639-1 code (e.g. 'de', 'ja') "
            f"or one of the aliases {sorted(ALIASES)}"
        )
    return iso
