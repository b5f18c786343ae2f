"""Everything before the train step: corpora, tokenizer, packing and the grain loader."""
