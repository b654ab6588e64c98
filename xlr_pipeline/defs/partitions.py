import dagster as dg

# Languages are added at run time (by `xlr run` or the new-language sensor), not declared in code.
language_partitions = dg.DynamicPartitionsDefinition(name="languages")

# The head trains on English captions only; other languages are evaluated zero-shot.
TRAIN_LANGUAGE = "en"
