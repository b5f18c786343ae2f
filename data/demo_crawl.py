"""A small web crawl built offline, with known defects, for the curation demo and tests.

    python -m data.demo_crawl --output_dir demo_crawl

The clean part is the Python documentation found on every installation: the language
reference topics of ``pydoc_data`` and the module docstrings of the standard library,
rendered as HTML pages with navigation, sidebars and footers around the article. Into
it go the defects a real crawl has, each counted in ``manifest.json``:

* exact copies on mirror sites and near copies with a few words changed;
* a promotional paragraph repeated inside many articles (substring dedup removes it);
* keyword-stuffed spam, some on blocked domains or with banned words in the URL;
* pages in other languages (from the project's own multilingual fixture);
* contact details with e-mail addresses, phone numbers, IP addresses, card numbers, SSNs;
* pages with profanity from the toxicity word list;
* pages quoting an evaluation set (written to ``eval/quotes.jsonl``) verbatim;
* navigation-only pages, non-HTML responses, a truncated file and malformed JSON lines.

It also writes ``docstrings/``: function and class docstrings as JSONL (zstd) with bad
lines in them; ``reference/reference.jsonl``: docstrings of modules kept out of the
crawl, the high-quality side for the quality classifier and the n-gram model; and
``web_sample/web.jsonl``: low-quality web text (spam, menus, word salad, forum chatter),
the other side of the quality classifier.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import random
import re
import sysconfig
from typing import Any

from absl import app
from absl import flags

from data import corpus
from data import sources

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANGUAGE_FIXTURES = os.path.join(_REPO, "tests", "fixtures", "languages")
_DATE = "2026-01-15T12:00:00Z"

BANNER = ("Upgrade your workflow today with the Premium Developer Toolkit, the only bundle that combines an "
          "intelligent editor, a cloud debugger and unlimited build minutes in one subscription. Thousands of teams "
          "already rely on it every day, and for a limited time new members receive three months free, priority "
          "support and an exclusive guide to shipping faster. Join now and see why reviewers call it the last tool "
          "you will ever need.")
_SPAM_WORDS = ("cheap", "best", "price", "discount", "buy", "online", "free", "shipping", "deal", "offer", "pills",
               "casino", "bonus", "win", "click", "now", "limited", "sale", "top", "rated", "guaranteed", "cash")
_PROFANE_SENTENCES = ("This damn function is shit and whoever wrote it is a fucking idiot.",
                      "What a bullshit API, the bastard who designed it should be ashamed, damn it.")


def _unwrap(text: str) -> list[tuple[str, str]]:
  """(kind, text) blocks of pydoc text: headings, prose paragraphs (lines joined) and code blocks."""
  blocks = []
  for raw in re.split(r"\n\s*\n", text):
    lines = raw.split("\n")
    if not raw.strip():
      continue
    if len(lines) == 2 and set(lines[1].strip()) <= set("*=-~") and lines[1].strip():
      blocks.append(("h", lines[0].strip()))
    elif all(line.startswith("   ") for line in lines if line.strip()):
      blocks.append(("pre", "\n".join(line[3:] for line in lines)))
    else:
      blocks.append(("p", " ".join(line.strip() for line in lines)))
  return blocks


def _escape(text: str) -> str:
  return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(title: str, blocks: list[tuple[str, str]], site: str, rng: random.Random) -> str:
  """An HTML page: the article inside navigation, a sidebar and a footer (the boilerplate to remove)."""
  nav = " | ".join(f'<a href="/{w.lower()}.html">{w}</a>' for w in ("Home", "Tutorial", "Library", "Reference",
                                                                  "Downloads", "Community", "Search"))
  sidebar = "".join(f'<li><a href="/t{rng.randrange(999)}.html">{w}</a></li>'
                    for w in rng.sample(("Previous topic", "Next topic", "This page", "Report a bug", "Show source",
                                         "Quick search", "Table of contents", "Navigation"), 5))
  body = [f"<h1>{_escape(title)}</h1>"]
  for kind, text in blocks:
    body.append(f"<h2>{_escape(text)}</h2>" if kind == "h" else
                f"<pre>{_escape(text)}</pre>" if kind == "pre" else f"<p>{_escape(text)}</p>")
  return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{_escape(title)} — {site}</title>"
          f"<script>var analytics = {{id: {rng.randrange(10**6)}}};</script></head><body>"
          f"<header><nav>{nav}</nav></header><div class=\"sidebar\"><ul>{sidebar}</ul></div>"
          f"<main><article>{''.join(body)}</article></main>"
          f"<footer><p>© 2001-2026 {site}. All rights reserved.</p><p><a href=\"/privacy.html\">Privacy policy</a> · "
          f"<a href=\"/terms.html\">Terms of use</a> · This site uses cookies.</p></footer></body></html>")


def _module_docstrings() -> list[tuple[str, str, list[tuple[str, str]]]]:
  """(module name, module docstring text, [(object name, docstring)]) of standard-library modules."""
  root = sysconfig.get_paths()["stdlib"]
  modules = []
  for path in corpus.stdlib_source_files():
    try:
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
      continue
    doc = ast.get_docstring(tree)
    if not doc or len(doc.split()) < 50:
      continue
    objects = [(node.name, ast.get_docstring(node)) for node in ast.walk(tree)
               if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node)]
    name = os.path.relpath(path, root)[:-3].replace(os.sep, ".").removesuffix(".__init__")
    modules.append((name, doc, [(n, d) for n, d in objects if len(d.split()) >= 30]))
  return modules


def _luhn_complete(digits: str) -> str:
  total = 0
  for i, d in enumerate(reversed(digits)):
    n = int(d)
    if i % 2 == 0:  # these positions are doubled once the check digit is appended
      n = n * 2 - 9 if n > 4 else n * 2
    total += n
  return digits + str((10 - total % 10) % 10)


def _contact_paragraph(rng: random.Random) -> tuple[str, dict[str, int]]:
  name = rng.choice(("maria.gonzalez", "j.smith", "chen.wei", "olga.petrova", "admin", "support.team"))
  email = f"{name}{rng.randrange(100)}@{rng.choice(('example.com', 'mailhost.org', 'corp.example.net'))}"
  phone = f"({rng.randrange(200, 999)}) {rng.randrange(200, 999)}-{rng.randrange(10000):04d}"
  ip = ".".join(str(rng.randrange(1, 255)) for _ in range(4))
  card = _luhn_complete("4" + "".join(str(rng.randrange(10)) for _ in range(14)))
  card = " ".join(card[i:i + 4] for i in range(0, 16, 4))
  ssn = f"{rng.randrange(1, 665):03d}-{rng.randrange(1, 99):02d}-{rng.randrange(1, 9999):04d}"
  text = (f"For questions about this page write to {email} or call {phone} during office hours. The staging "
          f"server answers at {ip}. Refunds were sent to the card {card} on file, and the invoice lists the "
          f"contractor's social security number {ssn}.")
  return text, {"email": 1, "phone": 1, "ip": 1, "credit_card": 1, "ssn": 1}


def _spam_page(rng: random.Random) -> list[tuple[str, str]]:
  blocks = []
  for _ in range(rng.randrange(3, 7)):
    blocks.append(("p", " ".join(rng.choice(_SPAM_WORDS) for _ in range(rng.randrange(30, 80)))))
  return blocks


def _low_quality_text(rng: random.Random, vocabulary: list[str], kind: int) -> str:
  """Web text of the kinds a quality classifier learns to reject: spam, menus, word salad, chatter."""
  if kind == 0:
    return "\n".join(" ".join(rng.choice(_SPAM_WORDS) for _ in range(rng.randrange(8, 30))) for _ in range(5))
  if kind == 1:
    items = ("Home", "About us", "Contact", "Login", "Sign up", "Cart (0)", "FAQ", "Blog", "Careers", "Sitemap",
             "Shop", "Gift cards", "Track order", "Help", "Newsletter", "Follow us", "Share", "Tweet", "Like")
    return "\n".join(" | ".join(rng.sample(items, rng.randrange(3, 8))) for _ in range(rng.randrange(4, 12)))
  if kind == 2:
    return " ".join(rng.choice(vocabulary) for _ in range(rng.randrange(60, 200)))
  chatter = ("lol", "omg", "same here", "first!!", "thx", "anyone?", "bump", "+1", "this", "idk", "so true",
             "nice post", "check my profile", "who cares", "wow", "ok", "great stuff", "subscribed")
  return "\n".join(rng.choice(chatter) for _ in range(rng.randrange(5, 20)))


def _language_paragraphs() -> dict[str, list[str]]:
  paragraphs = {}
  if os.path.isdir(LANGUAGE_FIXTURES):
    for name in sorted(os.listdir(LANGUAGE_FIXTURES)):
      code = name.split(".")[0]
      if code != "en" and name.endswith(".txt"):
        with open(os.path.join(LANGUAGE_FIXTURES, name), encoding="utf-8") as f:
          paragraphs[code] = [p.strip() for p in f.read().split("\n\n") if p.strip()]
  return paragraphs


def _first_entries(path: str, n: int) -> list[str]:
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip() and not line.startswith("#")][:n]


def build(output_dir: str, seed: int = 0, max_modules: int = 250) -> dict[str, Any]:
  """Writes the crawl, the docstring dump, the reference corpus and an evaluation set; returns the manifest."""
  from pydoc_data.topics import topics  # pylint: disable=import-outside-toplevel

  rng = random.Random(seed)
  counts: dict[str, int] = {}

  def count(key, n=1):
    counts[key] = counts.get(key, 0) + n

  modules = _module_docstrings()
  rng.shuffle(modules)
  split = min(max_modules, len(modules) // 2)  # the other half is the reference corpus, kept out of the crawl
  crawl_modules, reference_modules = modules[:split], modules[split:]
  articles = [(f"https://docs.python.example/reference/{name}.html", name, _unwrap(text))
              for name, text in sorted(topics.items())]
  articles += [(f"https://docs.python.example/library/{name}.html", name, _unwrap(doc))
               for name, doc, _ in crawl_modules]
  count("articles", len(articles))

  records, eval_items = [], []
  for i, (url, title, blocks) in enumerate(articles):
    blocks = list(blocks)
    if i % 4 == 1:  # the promotional paragraph, in a quarter of the articles
      blocks.insert(min(len(blocks), 2), ("p", BANNER))
      count("banner_paragraphs")
    if i % 9 == 2:
      paragraph, _ = _contact_paragraph(rng)
      blocks.append(("p", paragraph))
      count("pages_with_pii")
    if i % 37 == 5:
      blocks.insert(1, ("p", rng.choice(_PROFANE_SENTENCES) + " " + rng.choice(_PROFANE_SENTENCES)))
      count("profane_pages")
    prose = [text for kind, text in blocks if kind == "p" and len(text.split()) >= 40]
    if i % 23 == 7 and prose:
      eval_items.append({"text": prose[0]})
      count("pages_quoted_by_eval_set")
    records.append({"url": url, "html": render(title, blocks, "docs.python.example", rng), "date": _DATE})
    if i % 15 == 3:
      records.append({"url": url.replace("docs.python.example", "mirror.pydocs.example"), "html": records[-1]["html"],
                      "date": _DATE})
      count("exact_copies")
    if i % 15 == 8:
      near = []
      for kind, text in blocks:  # about 3% of the prose words changed; code and headings as they were
        words = text.split()
        if kind == "p":
          for _ in range(max(1, len(words) // 33)):
            words[rng.randrange(len(words))] = rng.choice(("really", "quite", "very", "also", "simply"))
        near.append((kind, " ".join(words) if kind == "p" else text))
      records.append({"url": url.replace("docs.python.example", "copies.example"),
                      "html": render(title, near, "copies.example", rng), "date": _DATE})
      count("near_copies")

  blocked = _first_entries(os.path.join(_REPO, "data", "lists", "blocked_domains.txt"), 3) or ["blocked.example"]
  banned = _first_entries(os.path.join(_REPO, "data", "lists", "url_banned_words.txt"), 3) or ["banned"]
  for i in range(40):
    if i < 8:
      url = f"https://www.{blocked[i % len(blocked)]}/offer{i}.html"
    elif i < 14:
      url = f"https://deals{i}.example/{banned[i % len(banned)]}-{i}.html"
    else:
      url = f"https://shop{i}.example/best-price-{i}.html"
    records.append({"url": url, "html": render("Best deals online", _spam_page(rng), "shop.example", rng),
                    "date": _DATE})
  count("spam_pages", 40)
  for code, paragraphs in _language_paragraphs().items():
    for j in range(3):
      chosen = paragraphs[j * 4:j * 4 + 4]
      if chosen:
        records.append({"url": f"https://{code}.wiki.example/page{j}.html",
                        "html": render(chosen[0][:40], [("p", p) for p in chosen], f"{code}.wiki.example", rng),
                        "date": _DATE})
        count("foreign_language_pages")
  for j in range(5):
    records.append({"url": f"https://docs.python.example/index{j}.html",
                    "html": render("Index", [], "docs.python.example", rng).replace("<h1>Index</h1>", ""),
                    "date": _DATE})
  count("navigation_only_pages", 5)
  for j in range(3):
    records.append({"url": f"https://docs.python.example/files/manual{j}.pdf", "html": "%PDF-1.7 binary",
                    "content_type": "application/pdf", "date": _DATE})
  count("non_html_responses", 3)

  order = list(range(len(records)))
  rng.shuffle(order)  # copies and spam spread through the crawl, as a crawler would find them
  records = [records[k] for k in order]
  crawl_dir = os.path.join(output_dir, "crawl")
  os.makedirs(crawl_dir, exist_ok=True)
  half = len(records) // 2
  sources.write_warc(os.path.join(crawl_dir, "crawl-00000.warc.gz"), records[:half])
  sources.write_warc(os.path.join(crawl_dir, "crawl-00001.warc.gz"), records[half:])
  count("warc_records", len(records))

  docstrings_dir = os.path.join(output_dir, "docstrings")
  os.makedirs(docstrings_dir, exist_ok=True)
  lines = [json.dumps({"text": doc, "url": f"https://docs.python.example/library/{module}.html#{name}",
                       "module": module}).encode()
           for module, _, objects in crawl_modules for name, doc in objects[:6]]
  count("docstring_records", len(lines))
  lines.insert(len(lines) // 3, b'{"text": "an unterminated record')
  lines.insert(len(lines) // 2, b'{"text": "bad bytes \xff\xfe in the middle"}')
  lines.insert(2 * len(lines) // 3, b'{"title": "a record without text"}')
  count("bad_docstring_lines", 3)
  import zstandard  # pylint: disable=import-outside-toplevel
  with open(os.path.join(docstrings_dir, "docstrings-00000.jsonl.zst"), "wb") as f:
    f.write(zstandard.ZstdCompressor().compress(b"\n".join(lines) + b"\n"))
  truncated = gzip.compress(b"\n".join(lines[:40]) + b"\n")
  with open(os.path.join(docstrings_dir, "docstrings-00001.jsonl.gz"), "wb") as f:
    f.write(truncated[:len(truncated) // 2])  # a download cut short
  count("truncated_files")

  reference_dir = os.path.join(output_dir, "reference")
  os.makedirs(reference_dir, exist_ok=True)
  with open(os.path.join(reference_dir, "reference.jsonl"), "w", encoding="utf-8") as f:
    for module, doc, objects in reference_modules:
      f.write(json.dumps({"id": module, "text": doc}) + "\n")
      for name, text in objects[:3]:
        f.write(json.dumps({"id": f"{module}.{name}", "text": text}) + "\n")
  web_dir = os.path.join(output_dir, "web_sample")
  os.makedirs(web_dir, exist_ok=True)
  vocabulary = " ".join(topics.values()).split()
  with open(os.path.join(web_dir, "web.jsonl"), "w", encoding="utf-8") as f:
    for j in range(240):
      f.write(json.dumps({"id": f"web{j:04d}", "text": _low_quality_text(rng, vocabulary, j % 4)}) + "\n")
  count("web_sample_documents", 240)
  eval_dir = os.path.join(output_dir, "eval")
  os.makedirs(eval_dir, exist_ok=True)
  with open(os.path.join(eval_dir, "quotes.jsonl"), "w", encoding="utf-8") as f:
    for item in eval_items:
      f.write(json.dumps(item) + "\n")
  manifest = {"seed": seed, "counts": counts}
  with open(os.path.join(output_dir, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def main(argv) -> None:
  """`python -m data.demo_crawl`: flags --output_dir, --seed, --max_modules."""
  del argv
  manifest = build(flags.FLAGS.output_dir, flags.FLAGS.seed, flags.FLAGS.max_modules)
  for key, value in manifest["counts"].items():
    print(f"{key:>26}: {value}")
  print(f"written to {flags.FLAGS.output_dir}")


if __name__ == "__main__":
  flags.DEFINE_string("output_dir", "demo_crawl", "Where to write the crawl.")
  flags.DEFINE_integer("seed", 0, "Seed of the injected defects.")
  flags.DEFINE_integer("max_modules", 250, "Standard-library modules rendered as pages (at most half).")
  app.run(main)
