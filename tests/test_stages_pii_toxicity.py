"""PII redaction, toxicity filter and decontamination stages.

PII recall is measured on generated items (at least 500 per kind, seeded) embedded in
sentences of real prose; false redactions on the paragraphs of the pydoc topics and on a
generated set of technical numbers that resemble PII.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import pickle
import random
import re

import pytest

from configs.curate import base
from data import corpus
from data import stages
from data.corpus import Document
from data.stages import Drop
from data.stages import classifier as classifier_lib
from data.stages import decontamination as decontamination_lib
from data.stages import pii as pii_lib
from data.stages import toxicity as toxicity_lib

ITEMS_PER_KIND = 600


def _topics() -> dict[str, str]:
  from pydoc_data.topics import topics  # pylint: disable=import-outside-toplevel
  return topics


def _paragraphs() -> list[str]:
  return [p for text in _topics().values() for p in re.split(r"\n\s*\n", text) if p.strip()]


def _prose_sentences() -> list[str]:
  """Plain sentences of the pydoc topics: letters and light punctuation only, 6-30 words."""
  sentences = []
  for paragraph in _paragraphs():
    for sentence in re.split(r"(?<=[.!?])\s+", " ".join(paragraph.split())):
      if re.fullmatch(r"[A-Z][A-Za-z ,;'()-]+\.", sentence) and 6 <= len(sentence.split()) <= 30:
        sentences.append(sentence)
  return sentences


SENTENCES = _prose_sentences()


def _redactor(**changes) -> pii_lib.PIIRedaction:
  config = base.get_config()
  for key, value in changes.items():
    config.pii[key] = value
  return pii_lib.PIIRedaction(config.pii)


# --- PII item generators (seeded); each returns the item text. ---

def _luhn_complete(prefix_and_body: str) -> str:
  """The digits followed by the check digit that makes the whole number pass the Luhn check."""
  for check in "0123456789":
    if pii_lib.luhn_valid(prefix_and_body + check):
      return prefix_and_body + check
  raise AssertionError("unreachable: one check digit always works")


def _card_digits(rng: random.Random) -> str:
  network = rng.choice(["visa16", "visa13", "mastercard", "mastercard2", "amex"])
  if network == "visa16":
    prefix, length = "4", 16
  elif network == "visa13":
    prefix, length = "4", 13
  elif network == "mastercard":
    prefix, length = str(rng.randint(51, 55)), 16
  elif network == "mastercard2":
    prefix, length = str(rng.randint(2221, 2720)), 16
  else:
    prefix, length = rng.choice(["34", "37"]), 15
  body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
  return _luhn_complete(body)


def _format_card(digits: str, rng: random.Random) -> str:
  style = rng.choice(["contiguous", "space", "dash"])
  if style == "contiguous":
    return digits
  separator = " " if style == "space" else "-"
  if len(digits) == 15:  # American Express: 4-6-5
    return separator.join([digits[:4], digits[4:10], digits[10:]])
  return separator.join(digits[i:i + 4] for i in range(0, len(digits), 4))


def _card(rng: random.Random) -> str:
  return _format_card(_card_digits(rng), rng)


def _email(rng: random.Random) -> str:
  first = rng.choice(["john", "maria", "wei", "fatima", "olga", "raj", "sam", "lea", "juan", "kofi"])
  last = rng.choice(["smith", "garcia", "chen", "okafor", "ivanova", "patel", "mueller", "dubois", "tanaka"])
  local = rng.choice([f"{first}.{last}", f"{first}_{last}", f"{first[0]}{last}{rng.randint(1, 999)}",
                      f"{first}+{rng.choice(['news', 'work', 'x'])}", f"{first}-{last}",
                      f"{last}.{first}.{rng.randint(1, 99)}", f"{first.upper()}{rng.randint(0, 9)}"])
  labels = [rng.choice(["mail", "example", "uni-bonn", "corp", "acme", "post", "mx1", "my-company", "dept"])
            for _ in range(rng.randint(1, 3))]
  tld = rng.choice(["com", "org", "net", "io", "co.uk", "de", "fr", "info", "edu", "dev", "museum"])
  return f"{local}@{'.'.join(labels)}.{tld}"


def _nanp(rng: random.Random) -> tuple[str, str, str]:
  return f"{rng.randint(2, 9)}{rng.randint(0, 99):02d}", f"{rng.randint(2, 9)}{rng.randint(0, 99):02d}", \
      f"{rng.randint(0, 9999):04d}"


def _phone(rng: random.Random) -> str:
  if rng.random() < 0.7:
    area, exchange, line = _nanp(rng)
    return rng.choice([
        f"({area}) {exchange}-{line}", f"({area}){exchange}-{line}", f"{area}-{exchange}-{line}",
        f"{area}.{exchange}.{line}", f"+1 {area} {exchange} {line}", f"+1-{area}-{exchange}-{line}",
        f"1-{area}-{exchange}-{line}", f"+1 ({area}) {exchange}-{line}", f"+1.{area}.{exchange}.{line}",
        f"1 ({area}) {exchange} {line}"])
  country = rng.choice(["44", "49", "33", "81", "91", "61", "353", "86", "7", "39", "34", "55", "27", "971", "358"])
  total = rng.randint(max(8, len(country) + 4), 15)
  national = total - len(country)
  groups = []
  while national:
    size = min(national, rng.randint(1, 4) if not groups else rng.randint(2, 4))
    groups.append("".join(rng.choice("0123456789") for _ in range(size)))
    national -= size
  separator = rng.choice([" ", " ", "-", "."])
  if separator == "." and len(groups) < 2:
    separator = " "
  return f"+{country}{separator}{separator.join(groups)}"


def _ip(rng: random.Random) -> str:
  if rng.random() < 0.8:
    return ".".join(str(rng.choice([rng.randint(0, 255), rng.randint(1, 9), rng.randint(10, 99)])) for _ in range(4))
  groups = [rng.randint(1, 0xFFFF) for _ in range(8)]
  if rng.random() < 0.5:  # a run of zero groups, written compressed
    start = rng.randint(1, 5)
    groups[start:start + rng.randint(2, 3)] = [0] * len(groups[start:start + 3])
    groups = groups[:8]
  address = ipaddress.IPv6Address(sum(g << (16 * (7 - i)) for i, g in enumerate(groups)))
  text = address.compressed if rng.random() < 0.7 else address.exploded
  return text.upper() if rng.random() < 0.2 else text


def _ssn(rng: random.Random) -> str:
  area = rng.choice([a for a in range(1, 900) if a != 666])
  return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


GENERATORS = {"email": _email, "phone": _phone, "ip": _ip, "credit_card": _card, "ssn": _ssn}
LEADS = {
    "email": ["Write to", "Contact", "Send the report to", "email:", "Reply to"],
    "phone": ["Call", "Phone:", "Reach the office on", "Tel.", "Fax"],
    "ip": ["The server at", "Connect to", "Requests came from", "host", "IP:"],
    "credit_card": ["Card number", "Charge it to", "Paid with card", "CC:", "The card"],
    "ssn": ["SSN", "Social security number", "Her SSN is", "ID:", "Tax record"],
}


def _embed(item: str, lead_choices: list[str], rng: random.Random) -> str:
  """`item` inside real prose: a sentence, a lead phrase, the item with varied punctuation, a sentence."""
  before, after = rng.choice(SENTENCES), rng.choice(SENTENCES)
  closing = rng.choice(["", ".", ",", ";", "!"])
  core = f"({rng.choice(lead_choices)} {item})" if rng.random() < 0.2 else f"{rng.choice(lead_choices)} {item}{closing}"
  layout = rng.random()
  if layout < 0.1:
    return f"{item} {after}"
  if layout < 0.2:
    return f"{before} {rng.choice(lead_choices)} {item}"
  return f"{before} {core} {after}"


def test_prose_sentences_are_available():
  assert len(SENTENCES) > 500


@pytest.mark.parametrize("kind", list(GENERATORS))
def test_pii_recall_per_kind(kind):
  rng = random.Random(f"pii-{kind}")
  stage = _redactor()
  placeholder = f"<{kind.upper()}>"
  found, misses = 0, []
  for _ in range(ITEMS_PER_KIND):
    item = GENERATORS[kind](rng)
    text = _embed(item, LEADS[kind], rng)
    result = stage(Document(id="d", source="s", text=text))
    if item not in result.text and placeholder in result.text:
      found += 1
      assert result.metadata["edits"][kind] >= 1
    else:
      misses.append(item)
  recall = found / ITEMS_PER_KIND
  print(f"{kind}: recall {recall:.4f}; missed {misses[:10]}")
  assert recall >= 0.99, misses[:20]


def test_edits_count_each_kind_and_keep_metadata():
  stage = _redactor()
  text = ("Mail ann@example.com or bob.smith@mail.example.org, call (415) 555-0132 or +44 20 7946 0958, "
          "server 10.0.0.12, card 4111 1111 1111 1111 and SSN 123-45-6789.")
  result = stage(Document(id="d", source="s", text=text, metadata={"lang": "en", "edits": {"email": 1}}))
  assert result.text == ("Mail <EMAIL> or <EMAIL>, call <PHONE> or <PHONE>, server <IP>, card <CREDIT_CARD> and "
                         "SSN <SSN>.")
  assert result.metadata == {"lang": "en", "edits": {"email": 3, "phone": 2, "ip": 1, "credit_card": 1, "ssn": 1}}
  clean = Document(id="c", source="s", text="Nothing personal here: 3.11.7 and 2024-01-15.")
  assert stage(clean) is clean


def test_kinds_and_placeholder_are_configurable():
  text = "ann@example.com 10.0.0.12 123-45-6789"
  stage = _redactor(kinds=("ssn",), placeholder="[{kind} REMOVED]")
  result = stage(Document(id="d", source="s", text=text))
  assert result.text == "ann@example.com 10.0.0.12 [SSN REMOVED]"
  assert result.metadata["edits"] == {"ssn": 1}
  with pytest.raises(ValueError, match=r"pii\.kinds.*'passport'"):
    _redactor(kinds=("email", "passport"))
  with pytest.raises(ValueError, match=r"pii\.placeholder"):
    _redactor(placeholder="<{name}>")


def test_luhn_invalid_and_invalid_ssn_numbers_are_kept():
  rng = random.Random("invalid")
  stage = _redactor()
  for _ in range(ITEMS_PER_KIND):
    digits = _card_digits(rng)
    wrong = digits[:-1] + str((int(digits[-1]) + rng.randint(1, 9)) % 10)
    assert not pii_lib.luhn_valid(wrong)
    text = _embed(_format_card(wrong, rng), LEADS["credit_card"], rng)
    assert stage(Document(id="d", source="s", text=text)).text == text
  for ssn in ["000-12-3456", "666-12-3456", "900-12-3456", "999-99-9999", "123-00-4567", "123-45-0000"]:
    text = f"The record lists {ssn} as the number."
    assert stage(Document(id="d", source="s", text=text)).text == text


def _redacted_spans(before: str, after: str) -> list[str]:
  matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
  return [before[i1:i2] for op, i1, i2, _, _ in matcher.get_opcodes() if op != "equal"]


def test_few_false_redactions_on_pydoc_topics():
  stage = _redactor()
  paragraphs = _paragraphs()
  redactions = []
  for paragraph in paragraphs:
    result = stage(Document(id="p", source="docs", text=paragraph))
    if result is not None and result.text != paragraph:
      count = sum(result.metadata["edits"].values())
      redactions.append((count, result.metadata["edits"], _redacted_spans(paragraph, result.text)))
  total = sum(count for count, _, _ in redactions)
  print(f"{total} redactions in {len(paragraphs)} pydoc paragraphs: {[(e, s) for _, e, s in redactions]}")
  assert len(paragraphs) > 1000
  assert total <= 0.01 * len(paragraphs)


def _isbn13(rng: random.Random) -> str:
  body = rng.choice(["978", "979"]) + "".join(rng.choice("0123456789") for _ in range(9))
  check = (10 - sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body)) % 10) % 10
  return body + str(check)


def _technical_number(rng: random.Random) -> str:
  """A number of technical prose that resembles PII but is none."""
  a, b, c, d = (rng.randint(0, 30) for _ in range(4))
  year, month, day = rng.randint(1970, 2030), rng.randint(1, 12), rng.randint(1, 28)
  hour, minute, second = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
  isbn = _isbn13(rng)
  big = rng.randint(10**9, 10**12)
  return rng.choice([
      f"{a}.{b}.{c}", f"version {a}.{b}.{c}.{d}", f"v{a}.{b}.{c}.{d}", f"Python 3.{b}.{c}.{d}",
      f"release {a}.{b}.{c}.{d}", f"section {a}.{b}.{c}.{d}",
      f"{year}-{month:02d}-{day:02d}", f"{day:02d}.{month:02d}.{year}", f"{month:02d}/{day:02d}/{year}",
      f"{year}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}Z",
      f"{hour:02d}:{minute:02d}", f"{hour:02d}:{minute:02d}:{second:02d}",
      f"{hour:02d}:{minute:02d}:{second:02d}.{big % 1000:03d}",
      f"{rng.uniform(-1000, 1000):.5f}", f"{rng.random():.15f}", f"{rng.uniform(1, 9):.3f}e-{rng.randint(1, 30)}",
      f"+{rng.uniform(0, 10):.8f}",
      isbn, f"{isbn[:3]}-{isbn[3]}-{isbn[4:8]}-{isbn[8:12]}-{isbn[12]}",
      f"ISBN 0-{rng.randint(100, 999)}-{rng.randint(10000, 99999)}-{rng.randint(0, 9)}",
      f"{rng.randint(100, 999)}-{rng.randint(100, 999)}",
      f"{rng.randint(1, 99)}-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
      f"pages {rng.randint(200, 999)}-{rng.randint(200, 999)}", f"{rng.randint(1000, 4000)}-{rng.randint(4000, 9000)}",
      f"port {rng.randint(1, 65535)}", f"localhost:{rng.randint(1024, 65535)}",
      f"0x{rng.getrandbits(32):08X}", f"{rng.getrandbits(64):016x}", f"{rng.getrandbits(160):040x}",
      f"#{rng.getrandbits(24):06x}",
      f"{big:,} bytes", f"{2 ** rng.randint(20, 63)} bytes", f"{rng.randint(1, 512)} KiB",
      f"line {rng.randint(1, 99999)}", f"lines {a}-{a + b}",
      f"{rng.randint(200, 999)}-{rng.randint(200, 999)}-{rng.randint(10000, 99999)}",
      f"({rng.randint(200, 999)}) {rng.randint(200, 999)}-{rng.randint(0, 999):03d}",
      f"{rng.randint(256, 999)} {rng.randint(256, 999)} {rng.randint(1000, 9999)}",
      f"a[{a}::{b + 1}]", f"x[{rng.randint(10, 999)}::{rng.randint(10, 999)}]",
      f"({a}, {b}, {c})", f"{rng.randint(10**15, 10**16 - 1)}", f"{rng.randint(10**19, 10**22)}",
      f"1{rng.randint(10**14, 10**15 - 1)}", f"{rng.choice('789')}{rng.randint(10**14, 10**15 - 1)}",
  ])


def test_few_false_redactions_on_technical_numbers():
  rng = random.Random("hard-negatives")
  stage = _redactor()
  redacted = []
  num_items = 2000
  for _ in range(num_items):
    item = _technical_number(rng)
    text = f"{rng.choice(SENTENCES)} The value is {item}. {rng.choice(SENTENCES)}"
    result = stage(Document(id="d", source="s", text=text))
    if result.text != text:
      redacted.append((item, result.metadata["edits"]))
  print(f"{len(redacted)} of {num_items} technical numbers redacted: {redacted}")
  assert len(redacted) <= 0.01 * num_items


def test_version_rule_for_four_part_numbers():
  stage = _redactor(kinds=("ip",))
  kept = ["version 1.2.3.4", "Python 3.12.0.1", "v1.2.3.4", "release 10.0.0.1", "1.2.3.4.5", "256.1.1.1",
          "01.02.03.04", '__version__ = "0.5.1.2"', "rfc7231#section-7.1.1.1", 'specs sections "8.2.4.44',
          "Versions: 2.7.2.2"]
  for text in kept:
    assert stage(Document(id="d", source="s", text=f"See {text} here.")).text == f"See {text} here."
  redacted = {"See 1.2.3.4 here.": "See <IP> here.", "version 2 runs on 10.0.0.1": "version 2 runs on <IP>",
              "server v2: 10.0.0.1": "server v2: <IP>", "vivid 8.8.8.8": "vivid <IP>"}
  for text, expected in redacted.items():
    assert stage(Document(id="d", source="s", text=text)).text == expected


# --- Toxicity ---

def _toxicity_config(tmp_path, words=None, **changes):
  config = base.get_config().toxicity
  if words is not None:
    path = tmp_path / "words.txt"
    path.write_text("# test list\n\n" + "\n".join(words) + "\n")
    config.words_file = str(path)
  for key, value in changes.items():
    config[key] = value
  return config


def _filler(num_words: int) -> str:
  words = " ".join(SENTENCES).split()
  return " ".join(words[:num_words])


def test_default_toxic_word_list_loads():
  stage = toxicity_lib.ToxicityFilter(base.get_config().toxicity)
  assert len(stage.words) >= 30
  assert "fuck" in stage.words and "son of a bitch" in stage.words
  assert not any(w.startswith("#") for w in stage.words)
  text = "What the fuck, you son of a  BITCH. " + _filler(40)
  assert stage.count_matches(text) == 2
  assert stage(Document(id="d", source="s", text=text)).reason == "toxic_words"


def test_toxic_words_threshold(tmp_path):
  stage = toxicity_lib.ToxicityFilter(_toxicity_config(tmp_path, ["zorp", "blarg fest"]))
  short = f"{_filler(98)} zorp zorp"  # 100 words, 2 matches: 0.02 > 0.005
  assert stage(Document(id="a", source="s", text=short)) == Drop("toxic_words", "2 matches, 0.020 of words")
  one = f"{_filler(99)} zorp"  # below min_matches
  assert stage(Document(id="b", source="s", text=one)).text == one
  long = f"{_filler(998)} zorp zorp"  # 1000 words: 0.002 <= 0.005
  assert stage(Document(id="c", source="s", text=long)).text == long
  loose = toxicity_lib.ToxicityFilter(_toxicity_config(tmp_path, ["zorp"], min_matches=1, max_word_fraction=0.0))
  assert isinstance(loose(Document(id="b", source="s", text=one)), Drop)


def test_toxic_words_match_whole_words_and_phrases_only(tmp_path):
  stage = toxicity_lib.ToxicityFilter(_toxicity_config(tmp_path, ["zorp", "blarg fest"]))
  assert stage.count_matches("zorpy unzorp zorping zorp_x x_zorp blargfest blarg festival blarg-fester") == 0
  assert stage.count_matches("ZORP, (zorp) Zorp! blarg\n  FEST blarg fest.") == 5
  assert stage.count_matches("") == 0


def test_custom_list_replaces_default(tmp_path):
  stage = toxicity_lib.ToxicityFilter(_toxicity_config(tmp_path, ["zorp"]))
  assert stage.words == frozenset({"zorp"})
  text = "fuck shit fuck shit bastard " + _filler(20)
  assert stage(Document(id="d", source="s", text=text)).text == text
  default = toxicity_lib.ToxicityFilter(base.get_config().toxicity)
  assert default(Document(id="d", source="s", text=text)).reason == "toxic_words"


def test_toxicity_bad_config(tmp_path):
  missing = str(tmp_path / "nope.txt")
  with pytest.raises(FileNotFoundError, match=r"toxicity\.words_file.*nope\.txt"):
    toxicity_lib.ToxicityFilter(_toxicity_config(tmp_path, words_file=missing))
  with pytest.raises(FileNotFoundError, match=r"toxicity\.classifier_path.*model\.npz"):
    toxicity_lib.ToxicityFilter(_toxicity_config(tmp_path, classifier_path=str(tmp_path / "model.npz")))
  with pytest.raises(ValueError, match=r"toxicity\.max_word_fraction"):
    toxicity_lib.ToxicityFilter(_toxicity_config(tmp_path, max_word_fraction=2.0))


_INSULTS = ["idiot", "moron", "stupid", "loser", "pathetic", "hate", "disgusting", "worthless", "shut up", "dumb",
            "trash", "garbage", "clown", "ugly"]


def _toxic_texts(rng: random.Random, count: int) -> list[str]:
  return [" ".join(rng.choice(["you", "are", "a", "the", "so", "such", "total", "what", "complete"] + _INSULTS)
                   for _ in range(rng.randint(8, 20))) + "!" for _ in range(count)]


def test_toxicity_classifier(tmp_path):
  rng = random.Random(0)
  toxic, clean = _toxic_texts(rng, 300), SENTENCES[:300]
  model = classifier_lib.train(toxic, clean, ngram_max=2, num_features=2**18, epochs=5, seed=0)
  path = str(tmp_path / "toxic.npz")
  model.save(path)
  stage = toxicity_lib.ToxicityFilter(_toxicity_config(tmp_path, words_file="", classifier_path=path))
  assert stage.words == frozenset()
  toxic_result = stage(Document(id="t", source="s", text="you are a stupid worthless idiot, shut up you moron"))
  assert toxic_result.reason == "toxic_classifier"
  assert re.fullmatch(r"p=0\.\d\d|p=1\.00", toxic_result.detail) and float(toxic_result.detail[2:]) > 0.5
  clean_text = SENTENCES[400]
  assert stage(Document(id="c", source="s", text=clean_text)).text == clean_text
  strict = toxicity_lib.ToxicityFilter(_toxicity_config(tmp_path, words_file="", classifier_path=path,
                                                        classifier_max_score=1.0))
  assert not isinstance(strict(Document(id="t", source="s", text="you stupid idiot")), Drop)


def test_ensure_model_trains_from_corpora(tmp_path):
  rng = random.Random(1)
  toxic_path, clean_path = tmp_path / "toxic.jsonl", tmp_path / "clean.jsonl"
  toxic_path.write_text("".join(json.dumps({"text": t}) + "\n" for t in _toxic_texts(rng, 200)))
  clean_path.write_text("".join(json.dumps({"text": t}) + "\n" for t in SENTENCES[:200]))
  config = base.get_config().toxicity
  config.toxic = [base.source("toxic", str(toxic_path), "jsonl")]
  config.clean = [base.source("clean", str(clean_path), "jsonl")]
  read_specs = []

  def read_documents(specs):
    read_specs.append([s.name for s in specs])
    for spec in specs:
      yield from corpus.user_documents(spec.paths)

  lines = []
  default_path = str(tmp_path / "models" / "toxicity.npz")
  trained = toxicity_lib.ensure_model(config, read_documents, default_path, lines.append)
  assert trained.classifier_path == default_path and config.classifier_path == ""
  assert read_specs == [["toxic"], ["clean"]]
  assert len(lines) == 1 and "toxicity" in lines[0] and default_path in lines[0] and "accuracy" in lines[0]
  accuracy = float(re.search(r"accuracy (\d\.\d+)", lines[0]).group(1))
  assert accuracy >= 0.9
  stage = toxicity_lib.ToxicityFilter(trained)
  assert stage.classifier is not None
  assert stage(Document(id="t", source="s", text="you pathetic stupid loser, total garbage clown")).reason == \
      "toxic_classifier"
  # An existing model is reused, not retrained.
  assert toxicity_lib.ensure_model(trained, read_documents, "unused", lines.append) is trained
  assert len(lines) == 1


def test_ensure_model_without_corpora(tmp_path):
  config = base.get_config().toxicity
  assert toxicity_lib.ensure_model(config, lambda specs: [], str(tmp_path / "m.npz"), print) is config
  assert toxicity_lib.ToxicityFilter(config).classifier is None
  one_sided = config.copy_and_resolve_references()
  one_sided.toxic = [base.source("toxic", str(tmp_path / "t.jsonl"), "jsonl")]
  with pytest.raises(ValueError, match=r"toxicity\.clean"):
    toxicity_lib.ensure_model(one_sided, lambda specs: [], str(tmp_path / "m.npz"), print)
  missing = config.copy_and_resolve_references()
  missing.classifier_path = str(tmp_path / "gone.npz")
  with pytest.raises(FileNotFoundError, match=r"toxicity\.classifier_path.*gone\.npz"):
    toxicity_lib.ensure_model(missing, lambda specs: [], str(tmp_path / "m.npz"), print)


# --- Decontamination ---

HELLASWAG = {
    "ctx": ("A man is standing on a ladder next to a tall house. He carefully scrapes the old paint off the wooden "
            "window frame with a metal tool while a dog watches from the lawn"),
    "endings": ["He then climbs down the ladder and paints the window frame a bright shade of blue before lunch.",
                "He falls off.", "The dog begins to sing loudly at the neighbours across the quiet suburban street.",
                "He throws the tool."],
    "label": 0,
}
ARC = {
    "question": ("Which property of a mineral can be determined just by looking at it without using any special "
                 "tools or chemical tests in the laboratory?"),
    "choices": {"text": ["luster", "mass", "weight",
                         "the way the surface of the freshly broken mineral reflects the light of an ordinary lamp"],
                "label": ["A", "B", "C", "D"]},
    "answerKey": "A",
}
LAMBADA = {"text": ("She had kept the letter in the drawer of her grandmother's desk for eleven years, never once "
                    "opening it, because she knew the handwriting on the envelope belonged to her brother")}


@pytest.fixture
def eval_files(tmp_path):
  paths = {}
  for name, record in [("hellaswag.jsonl", HELLASWAG), ("arc.jsonl", ARC), ("lambada.jsonl", LAMBADA)]:
    path = tmp_path / name
    path.write_text(json.dumps({"id": 7, "other": "short words"}) + "\n\n" + json.dumps(record) + "\n")
    paths[name] = str(path)
  return paths


def _decontaminator(files, **changes) -> decontamination_lib.Decontamination:
  config = base.get_config()
  config.decontamination.eval_files = tuple(files)
  for key, value in changes.items():
    config.decontamination[key] = value
  return decontamination_lib.Decontamination(config.decontamination)


def _passage(text: str, start: int, num_words: int) -> str:
  """The stretch of `text`, punctuation included, from its word `start` spanning `num_words` words (\\w+ runs)."""
  spans = [m.span() for m in re.finditer(r"\w+", text)][start:start + num_words]
  assert len(spans) == num_words
  return text[spans[0][0]:spans[-1][1]]


def _num_words(text: str) -> int:
  return len(re.findall(r"\w+", text))


def _document_with(passage: str) -> Document:
  return Document(id="d", source="web", text=f"{SENTENCES[0]} {passage} {SENTENCES[1]}")


@pytest.mark.parametrize("name,text", [
    ("hellaswag.jsonl", HELLASWAG["ctx"]),
    ("hellaswag.jsonl", HELLASWAG["endings"][0]),
    ("hellaswag.jsonl", HELLASWAG["endings"][2]),
    ("arc.jsonl", ARC["question"]),
    ("arc.jsonl", ARC["choices"]["text"][3]),
    ("lambada.jsonl", LAMBADA["text"]),
])
def test_thirteen_word_overlap_is_dropped_with_the_file_named(eval_files, name, text):
  stage = _decontaminator(eval_files.values())
  for start in (0, _num_words(text) - 13):
    passage = _passage(text, start, 13)
    result = stage(_document_with(passage))
    assert isinstance(result, Drop) and result.reason == "contaminated"
    ngram_text = " ".join(re.findall(r"\w+", passage.lower()))
    assert result.detail == f"{name}: '{ngram_text}'"
    assert stage(_document_with(_passage(text, start, 12))).text.endswith(SENTENCES[1])


def test_case_and_punctuation(eval_files):
  passage = _passage(LAMBADA["text"], 3, 13)
  shouted = passage.upper().replace(" ", " -- ")
  assert isinstance(_decontaminator(eval_files.values())(_document_with(shouted)), Drop)
  case_sensitive = _decontaminator(eval_files.values(), lowercase=False)
  assert not isinstance(case_sensitive(_document_with(shouted)), Drop)
  assert isinstance(case_sensitive(_document_with(passage)), Drop)


def test_short_eval_texts_are_ignored(eval_files):
  stage = _decontaminator(eval_files.values())
  # Every string counts: one filler record per file; HellaSwag ctx + 4 endings; ARC question, 4 choice texts,
  # 4 choice labels and the answer key; the LAMBADA text.
  assert stage.num_texts == 3 + 5 + 10 + 1
  # Short: the fillers, two short endings, three one-word choices, the labels and the answer key.
  assert stage.num_short_texts == 3 + 2 + 3 + 4 + 1
  doc = _document_with("The answer is luster, and he falls off. He throws the tool. Short words.")
  assert stage(doc) is doc


def test_long_document_scanned_to_the_end_and_first_match_reported(eval_files):
  stage = _decontaminator(eval_files.values())
  filler = _filler(2000)
  first, second = _passage(ARC["question"], 2, 13), _passage(LAMBADA["text"], 5, 14)
  result = stage(Document(id="d", source="s", text=f"{filler} {first} {filler} {second}"))
  assert result.detail == "arc.jsonl: 'of a mineral can be determined just by looking at it without using'"
  assert stage(Document(id="d", source="s", text=f"{filler} {second}")).detail.startswith("lambada.jsonl: '")


def test_plain_text_eval_files_and_first_listed_file_wins(tmp_path, eval_files):
  plain = tmp_path / "passages.txt"
  plain.write_text(f"Title\n\n{LAMBADA['text']}\n  \n{HELLASWAG['ctx']}\n")
  stage = _decontaminator([str(plain), "", eval_files["lambada.jsonl"]])
  assert stage.eval_names == ["passages.txt", "lambada.jsonl"]
  assert stage.num_texts == 3 + 2
  assert stage(_document_with(_passage(LAMBADA["text"], 0, 13))).detail.startswith("passages.txt: ")
  assert stage(_document_with(_passage(HELLASWAG["ctx"], 4, 13))).detail.startswith("passages.txt: ")
  assert _decontaminator([eval_files["lambada.jsonl"], str(plain)])(
      _document_with(_passage(LAMBADA["text"], 0, 13))).detail.startswith("lambada.jsonl: ")


def test_compressed_jsonl_eval_file(tmp_path):
  import gzip  # pylint: disable=import-outside-toplevel
  import zstandard  # pylint: disable=import-outside-toplevel
  line = (json.dumps(LAMBADA) + "\n").encode()
  (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(line))
  (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(line))
  for name in ("a.jsonl.gz", "b.jsonl.zst"):
    stage = _decontaminator([str(tmp_path / name)])
    assert stage.num_ngrams == _num_words(LAMBADA["text"]) - 12
    assert stage(_document_with(_passage(LAMBADA["text"], 1, 13))).detail.startswith(f"{name}: ")


def test_decontamination_bad_config(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"decontamination\.eval_files.*missing\.jsonl"):
    _decontaminator([str(tmp_path / "missing.jsonl")])
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(LAMBADA) + "\n{not json\n")
  with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
    _decontaminator([str(bad)])
  with pytest.raises(ValueError, match=r"decontamination\.ngram"):
    _decontaminator([], ngram=0)
  empty = _decontaminator([])
  doc = _document_with(LAMBADA["text"])
  assert empty(doc) is doc


def test_stages_build_by_name_and_survive_pickling(eval_files):
  config = base.get_config()
  config.decontamination.eval_files = tuple(eval_files.values())
  doc = Document(id="d", source="s", text=f"Mail ann@example.com, fuck this shit: {_passage(LAMBADA['text'], 0, 13)}")
  for name in ("pii", "toxicity", "decontamination"):
    stage = stages.build(name, config)
    result = stage(doc)
    assert result is not doc
    assert pickle.loads(pickle.dumps(stage))(doc) == result
