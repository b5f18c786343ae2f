"""Multiple-choice benchmark files: the field layouts of HellaSwag, ARC, PIQA and LAMBADA, and generated fixtures.

A task file is JSONL, one item per line, in the field layout the public releases (and
lm-evaluation-harness) use, so the real files can be pointed at directly:

  hellaswag      {"activity_label", "ctx_a", "ctx_b", "endings": [4 strings], "label": int or "0".."3"}
  arc_easy,      {"question", "choices": {"text": [...], "label": ["A", ...]}, "answerKey": "A"}
  arc_challenge
  piqa           {"goal", "sol1", "sol2", "label": 0 | 1}
  lambada        {"text"}: the last word is the continuation to predict

Each line becomes an `Item`: a context, the choices (each scored as a continuation of the
context after a space, as the harness does) and the index of the right one. LAMBADA has one
choice, its last word; it is right when greedy decoding would produce it.

`make_fixtures` writes small files of each layout from documents of the project's own
corpus: the right continuation is the text that follows in the document, the wrong ones
are the same words shuffled (so unigram statistics cannot tell them apart, but a model of
word order can).

    python -m lm.tasks --out tasks/ [--items 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
from typing import Iterable, Sequence

from data.corpus import Document

TASKS = ("hellaswag", "arc_easy", "arc_challenge", "piqa", "lambada")
FEWSHOT_SEPARATOR = "\n\n"  # between the solved examples of a k-shot context and the item
CONTINUATION_DELIMITER = " "  # between a context and each of its choices


@dataclasses.dataclass(frozen=True)
class Item:
  context: str
  choices: tuple[str, ...]  # without the leading delimiter
  answer: int  # index into choices
  line: int  # 1-based line of the task file


class ItemError(ValueError):
  """A task-file line that cannot become an Item (missing field, answer out of range, ...)."""


def _field(record: dict, name: str, kind: type | tuple[type, ...]):
  if name not in record:
    raise ItemError(f"missing field {name!r}")
  value = record[name]
  if not isinstance(value, kind):
    raise ItemError(f"field {name!r} is {type(value).__name__}, expected {getattr(kind, '__name__', kind)}")
  return value


def _answer(value, num_choices: int, name: str) -> int:
  try:
    answer = int(value)
  except (TypeError, ValueError):
    raise ItemError(f"field {name!r} is {value!r}, expected an integer") from None
  if not 0 <= answer < num_choices:
    raise ItemError(f"answer index {answer} out of range for {num_choices} choices")
  return answer


def _hellaswag_text(text: str) -> str:
  """The harness's cleaning of HellaSwag's WikiHow text: bracketed markup removed, '[title]' made a sentence end."""
  text = text.strip().replace(" [title]", ". ")
  text = re.sub(r"\[.*?\]", "", text)
  return text.replace("  ", " ")


def _hellaswag(record: dict, line: int) -> Item:
  endings = _field(record, "endings", list)
  if not endings or not all(isinstance(e, str) for e in endings):
    raise ItemError("field 'endings' must be a non-empty list of strings")
  ctx_b = _field(record, "ctx_b", str)
  context = f"{_field(record, 'activity_label', str)}: {_field(record, 'ctx_a', str)} {ctx_b.capitalize()}"
  return Item(_hellaswag_text(context), tuple(_hellaswag_text(e) for e in endings),
              _answer(_field(record, "label", (int, str)), len(endings), "label"), line)


def _arc(record: dict, line: int) -> Item:
  choices = _field(record, "choices", dict)
  texts, labels = choices.get("text"), choices.get("label")
  if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels) or not texts:
    raise ItemError("field 'choices' must hold equally long non-empty lists 'text' and 'label'")
  key = _field(record, "answerKey", str)
  if key not in labels:
    raise ItemError(f"answerKey {key!r} is not among the choice labels {labels}")
  return Item(f"Question: {_field(record, 'question', str)}\nAnswer:", tuple(texts), labels.index(key), line)


def _piqa(record: dict, line: int) -> Item:
  choices = (_field(record, "sol1", str), _field(record, "sol2", str))
  return Item(f"Question: {_field(record, 'goal', str)}\nAnswer:", choices,
              _answer(_field(record, "label", (int, str)), 2, "label"), line)


def _lambada(record: dict, line: int) -> Item:
  text = _field(record, "text", str).strip()
  if " " not in text:
    raise ItemError("field 'text' needs at least two words")
  context, word = text.rsplit(" ", 1)
  return Item(context, (word,), 0, line)


PARSERS = {"hellaswag": _hellaswag, "arc_easy": _arc, "arc_challenge": _arc, "piqa": _piqa, "lambada": _lambada}


@dataclasses.dataclass
class TaskFile:
  items: list[Item]
  skipped: dict[str, list[int]]  # reason -> [count, first line]


def read(task: str, path: str) -> TaskFile:
  """The items of the JSONL `path` in `task`'s layout; bad lines are skipped and counted by reason.

  Raises:
    ValueError: unknown task, or a file without a single usable item.
  """
  if task not in PARSERS:
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
  items, skipped = [], {}
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        if not isinstance(record, dict):
          raise ItemError(f"a JSON {type(record).__name__}, expected an object")
        items.append(PARSERS[task](record, line_number))
      except (ItemError, json.JSONDecodeError) as e:
        reason = "invalid JSON" if isinstance(e, json.JSONDecodeError) else str(e)
        entry = skipped.setdefault(reason, [0, line_number])
        entry[0] += 1
  if not items:
    problems = "; ".join(f"{reason} ({count}x, first at line {first})" for reason, (count, first) in skipped.items())
    raise ValueError(f"{path} has no usable {task} item{': ' + problems if problems else ''}")
  return TaskFile(items, skipped)


def solved(item: Item) -> str:
  """An item with its right answer, as a few-shot example."""
  return item.context + CONTINUATION_DELIMITER + item.choices[item.answer]


def fewshot_context(item: Item, index: int, pool: Sequence[Item], shots: int, seed: int,
                    same_file: bool) -> str:
  """`item`'s context after `shots` solved examples drawn from `pool` with a seed fixed per item.

  With `same_file` (the pool is the evaluated file itself) the item is never its own example.
  """
  if shots == 0:
    return item.context
  candidates = [i for i in range(len(pool)) if not (same_file and i == index)]
  if len(candidates) < shots:
    raise ValueError(f"{shots}-shot contexts need {shots} other items; the few-shot pool has {len(candidates)}")
  chosen = random.Random(seed * 1_000_003 + index).sample(candidates, shots)
  return FEWSHOT_SEPARATOR.join([solved(pool[i]) for i in chosen] + [item.context])


# --- fixtures -------------------------------------------------------------------------------------------------------

def _passages(documents: Iterable[Document], words_needed: int, per_document: int = 4) -> list[list[str]]:
  """Runs of `words_needed` consecutive words (across line breaks), up to `per_document` from each document,
  taken from its start on, without overlap."""
  passages = []
  for doc in documents:
    words = [w for w in doc.text.split() if w.isprintable()]
    for start in range(0, min(len(words) - words_needed + 1, per_document * words_needed), words_needed):
      passages.append(words[start:start + words_needed])
  return passages


def _shuffled(words: list[str], rng: random.Random) -> list[str]:
  """`words` in another order (the same words when they are all alike)."""
  for _ in range(10):
    out = words[:]
    rng.shuffle(out)
    if out != words:
      return out
  return words[::-1]


def fixture_records(task: str, documents: Sequence[Document], items: int, seed: int) -> list[dict]:
  """`items` records of `task`'s layout built from `documents` (see the module docstring)."""
  rng = random.Random(seed)
  context_words, answer_words = 8, 12
  passages = _passages(documents, context_words + answer_words)
  rng.shuffle(passages)
  if len(passages) < items:
    raise ValueError(f"only {len(passages)} passages of {context_words + answer_words} words for {items} items")
  records = []
  for words in passages[:items]:
    context, right = words[:context_words], words[context_words:]
    num_choices = {"hellaswag": 4, "arc_easy": 4, "arc_challenge": 4, "piqa": 2}.get(task, 1)
    choices = [" ".join(right)] + [" ".join(_shuffled(right, rng)) for _ in range(num_choices - 1)]
    order = list(range(num_choices))
    rng.shuffle(order)
    answer = order.index(0)
    choices = [choices[i] for i in order]
    split = context_words // 2
    if task == "hellaswag":
      records.append({"activity_label": context[0], "ctx_a": " ".join(context[1:split]),
                      "ctx_b": " ".join(context[split:]), "endings": choices, "label": answer})
    elif task in ("arc_easy", "arc_challenge"):
      labels = [chr(ord("A") + i) for i in range(num_choices)]
      records.append({"question": " ".join(context), "choices": {"text": choices, "label": labels},
                      "answerKey": labels[answer]})
    elif task == "piqa":
      records.append({"goal": " ".join(context), "sol1": choices[0], "sol2": choices[1], "label": answer})
    else:
      records.append({"text": " ".join(words)})
  return records


def make_fixtures(documents: Sequence[Document], out_dir: str, items: int, seed: int) -> dict[str, str]:
  """Writes `{task}.jsonl` for every task in `out_dir`; returns task -> path."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  for offset, task in enumerate(TASKS):
    path = os.path.join(out_dir, f"{task}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
      for record in fixture_records(task, documents, items, seed + offset):
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    paths[task] = path
  return paths


def main(argv: Sequence[str] | None = None) -> None:
  from data import corpus  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog="python -m lm.tasks", description="Write generated task fixtures.")
  parser.add_argument("--out", required=True, help="directory for {task}.jsonl")
  parser.add_argument("--data", default="", help="documents (JSONL file or folder); '' = the embedded corpus")
  parser.add_argument("--split", choices=("train", "validation"), default="validation",
                      help="split of the corpus the passages come from (as launch-time tokenization splits it)")
  parser.add_argument("--items", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  train_docs, validation_docs = corpus.load(args.data, validation_fraction=0.05, seed=0)
  documents = train_docs if args.split == "train" else validation_docs
  for task, path in make_fixtures(documents, args.out, args.items, args.seed).items():
    print(f"{task}: {path}")


if __name__ == "__main__":
  main()
