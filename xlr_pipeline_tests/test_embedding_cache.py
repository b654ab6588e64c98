import numpy as np

from xlr_pipeline.core.embeddings import EmbeddingCache, embed_with_cache


def test_each_content_is_encoded_once_per_model(tmp_path):
    calls: list[list[str]] = []

    def encode(batch):
        calls.append(list(batch))
        return np.array([[len(text), 1.0] for text in batch], dtype=np.float32)

    cache = EmbeddingCache(tmp_path, "text:model-a")
    vectors, encoded = embed_with_cache(["a", "bb", "a", "ccc"], ["h1", "h2", "h1", "h3"], encode, cache, batch_size=2)
    assert encoded == 3 and vectors[:, 0].tolist() == [1, 2, 1, 3]
    again, encoded_again = embed_with_cache(["bb", "dddd"], ["h2", "h4"], encode, cache, batch_size=2)
    assert encoded_again == 1 and calls[-1] == ["dddd"] and again[:, 0].tolist() == [2, 4]
    # another model shares nothing
    _, other = embed_with_cache(["a"], ["h1"], encode, EmbeddingCache(tmp_path, "text:model-b"), batch_size=2)
    assert other == 1
