"""Shards: stable hash buckets of image ids (image shards) or caption ids (caption shards).

An item's shard depends only on its id and the shard count (the first 8 bytes of sha256(id), modulo the count),
so it is the same on every machine, in every run and for every process: shards can be embedded in parallel, by
separate runs, steps or cluster workers, and their union is the whole set.
"""

from __future__ import annotations

import hashlib
import re

MAX_SHARDS = 4096
_KEY = re.compile(r"^(\d+)-of-(\d+)$")


def shard_keys(count: int) -> list[str]:
    """The partition keys of `count` shards: `000-of-004`, `001-of-004`, …"""
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"shard count must be 1..{MAX_SHARDS}, not {count}")
    return [f"{index:03d}-of-{count:03d}" for index in range(count)]


def parse_shard_key(key: str) -> tuple[int, int]:
    """(index, count) of a key made by `shard_keys`."""
    match = _KEY.match(key)
    if not match or not int(match[1]) < int(match[2]):
        raise ValueError(f"{key!r} is not a shard key like '000-of-004'")
    return int(match[1]), int(match[2])


def shard_of(item_id: str, count: int) -> int:
    return int.from_bytes(hashlib.sha256(item_id.encode("utf-8")).digest()[:8], "big") % count


def shard_indices(item_ids: list[str], count: int) -> list[int]:
    """Each id's shard, one hash per id (a run covering several shards splits its items in one pass)."""
    return [shard_of(item_id, count) for item_id in item_ids]
