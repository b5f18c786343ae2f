"""Everything before the train step: corpora, curation, tokenizer, token shards and the mixture loader."""
