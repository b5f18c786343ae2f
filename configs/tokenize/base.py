"""Base config of tokenizer training and offline tokenization: every field, defined once.

    python -m data.tokenizer --config configs/tokenize/NAME.py   # sentencepiece model + fertility report
    python -m data.shards --config configs/tokenize/NAME.py      # documents -> ArrayRecord token shards

Both read the same inputs. Documents are grouped into sources by their own ``source``
field (what `data.curate` writes; ``docs`` / ``code`` for the embedded corpus; the file
or folder name for plain JSONL and text). Training then mixes the sources of a shard
directory with `data.mixture` (configs/base.py).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.inputs = ("",)  # document paths (JSONL file, folder of .jsonl shards / text files); '' = the embedded corpus
  c.sources = ()  # source names to keep (others are skipped and counted); () = every source found

  c.tokenizer = tok = ml_collections.ConfigDict()
  tok.output_dir = "tokenizers/run"  # spm.model, tokenizer.json, fertility.json
  tok.model_type = "bpe"  # bpe | unigram
  tok.vocab_size = 8192  # pieces in the vocabulary, special and byte pieces included
  tok.byte_fallback = True  # characters outside the vocabulary become UTF-8 byte pieces, never <unk>
  tok.split_digits = True  # every digit is its own piece (numbers tokenize uniformly)
  tok.bos_piece = "<|begin_of_text|>"  # piece of id 1, put before every document
  tok.eos_piece = "<|end_of_text|>"  # piece of id 2, put after every document
  tok.pad_piece = "<|pad|>"  # piece of id 3, fills the rest of a padded row
  tok.user_defined_symbols = ("\n",)  # extra pieces always kept whole (e.g. '<|fim_prefix|>'); newline: one token
  tok.sentences_per_source = 100_000  # training lines sampled from each source (evenly across sources)
  tok.fertility_documents = 200  # documents per source (held out from the sample) measured for the fertility report
  tok.seed = 0  # seed of the sample

  c.shards = sh = ml_collections.ConfigDict()
  sh.output_dir = "tokens/run"  # manifest.json, tokenizer/, SOURCE/{train,validation}-NNNNN.arrayrecord + .index.tsv
  sh.tokenizer_dir = ""  # tokenizer to encode with; '' = tokenizer.output_dir
  sh.validation_fraction = 0.05  # share of each source's documents held out (split by document id)
  sh.split_seed = 0  # seed of the train / validation split
  sh.record_tokens = 4096  # token ids per ArrayRecord record: a long document spans several, read in part
  sh.docs_per_shard = 50_000  # documents per shard file
  sh.num_workers = 0  # tokenizing processes; 0 = one per CPU core
  sh.chunk_docs = 256  # documents handed to a worker at a time

  c.lock()
  return c
