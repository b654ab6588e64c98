import multiprocessing
import sqlite3
import threading

import numpy as np
import pytest

from xlr_pipeline.core.models.embeddings import EmbeddingCache, embed_with_cache


def test_each_content_is_encoded_once_per_model(tmp_path):
    calls: list[list[str]] = []

    def encode(batch):
        calls.append(list(batch))
        return np.array([[len(text), 1.0] for text in batch], dtype=np.float32)

    cache = EmbeddingCache(tmp_path, "text:model-a", "engine-1")
    vectors, encoded = embed_with_cache(["a", "bb", "a", "ccc"], ["h1", "h2", "h1", "h3"], encode, cache, batch_size=2)
    assert encoded == 3 and vectors[:, 0].tolist() == [1, 2, 1, 3]
    again, encoded_again = embed_with_cache(["bb", "dddd"], ["h2", "h4"], encode, cache, batch_size=2)
    assert encoded_again == 1 and calls[-1] == ["dddd"] and again[:, 0].tolist() == [2, 4]
    # another model, or the same model on another backend, shares nothing
    _, other = embed_with_cache(
        ["a"], ["h1"], encode, EmbeddingCache(tmp_path, "text:model-b", "engine-1"), batch_size=2
    )
    _, other_backend = embed_with_cache(
        ["a"], ["h1"], encode, EmbeddingCache(tmp_path, "text:model-a", "engine-2"), batch_size=2
    )
    assert other == other_backend == 1


def _add_range(root, start: int) -> None:
    cache = EmbeddingCache(root, "image:m", "engine-1")
    for batch in range(start, start + 200, 20):
        cache.add([f"h{i}" for i in range(batch, batch + 20)], np.full((20, 4), batch, dtype=np.float32))


def test_concurrent_writer_processes_lose_nothing(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_add_range, args=(tmp_path, start)) for start in (0, 200, 400, 600)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    cache = EmbeddingCache(tmp_path, "image:m", "engine-1")
    found = cache.lookup([f"h{i}" for i in range(800)])
    assert len(cache) == len(found) == 800 and found["h613"].tolist() == [600.0] * 4


def test_a_new_cache_file_another_process_is_writing_is_waited_for(tmp_path):
    # SQLite fails a switch to WAL at once, without its busy wait, while another connection writes the file
    cache = EmbeddingCache(tmp_path, "image:m", "engine-1")
    other = sqlite3.connect(cache.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE unrelated (x)")
    release = threading.Timer(0.5, lambda: (other.execute("COMMIT"), other.close()))
    release.start()
    cache.add(["h1"], np.ones((1, 4), np.float32))
    release.join()
    assert cache.lookup(["h1"])["h1"].tolist() == [1.0] * 4


def test_a_failed_write_stores_nothing(tmp_path):
    cache = EmbeddingCache(tmp_path, "text:m", "engine-1")
    cache.add(["a"], np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="2 hashes for 1 vectors"):
        cache.add(["b", "c"], np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="non-empty strings"):
        cache.add(["b", None], np.ones((2, 3), np.float32))
    assert len(cache) == 1 and list(cache.lookup(["a", "b"])) == ["a"]


@pytest.mark.parametrize("damage", ["not a database", "truncated"])
def test_a_damaged_cache_file_is_set_aside_and_rebuilt(tmp_path, caplog, damage):
    cache = EmbeddingCache(tmp_path, "m", "b")
    cache.add(["h1", "h2"], np.ones((2, 4), dtype=np.float32))
    if damage == "not a database":
        cache.path.write_bytes(b"this is not sqlite" * 1000)
    else:
        data = cache.path.read_bytes()
        cache.path.write_bytes(data[:100] + b"\xff" * (len(data) - 100))
    for suffix in ("-wal", "-shm"):
        cache.path.with_name(cache.path.name + suffix).unlink(missing_ok=True)
    assert cache.lookup(["h1"]) == {}  # nothing trusted from the damaged file
    assert "unreadable embedding cache" in caplog.text and str(cache.path) in caplog.text
    assert len(list(tmp_path.glob(f"{cache.path.name}.damaged-*"))) == 1
    cache.add(["h1"], np.full((1, 4), 2.0, dtype=np.float32))
    assert cache.lookup(["h1"])["h1"].tolist() == [2.0] * 4 and len(cache) == 1
