"""URL filter: drops documents fetched from blocked domains or whose URL carries adult / spam words.

The rule set follows the URL filtering of RefinedWeb (Penedo et al. 2023, section G.1) and
FineWeb (Penedo et al. 2024): a domain block list (RefinedWeb uses the UT1 blacklist, about
4.6M domains), a list of words that drop a URL on their own, and a list of ambiguous
("soft-banned") words that drop a URL only when several of them occur together (config
`url_filter.soft_banned_min_matches`, 2 by default). The default lists in ``data/lists`` are
short examples; the block list in particular must be replaced by a real one.

List files hold one entry per line; ``#`` starts a comment and blank lines are ignored.
Entries are lowercased. A list path of ``''`` means an empty list.
"""

from __future__ import annotations

import re
import urllib.parse

import ml_collections

from data.corpus import Document
from data.stages import Drop

# Runs of letters (any script): digits, punctuation and '_' separate URL words.
_URL_WORD = re.compile(r"[^\W\d_]+")


def load_list(path: str, config_key: str) -> frozenset[str]:
  """The lowercased entries of a list file.

  Args:
    path: the list file (one entry per line, '#' comments, blank lines ignored); '' = empty list.
    config_key: the config key that named `path`, used in the error message.

  Returns:
    The set of entries.

  Raises:
    FileNotFoundError: `path` does not exist (the message names `config_key` and `path`).
  """
  if not path:
    return frozenset()
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise FileNotFoundError(f"{config_key}: {path} (list file not found; expected one entry per line)") from None
  entries = (line.split("#", 1)[0].strip().lower() for line in lines)
  return frozenset(entry for entry in entries if entry)


def url_host(url: str) -> str:
  """The lowercased host name of `url` ('' when it has none); a URL without a scheme is read as host/path.

  Raises:
    ValueError: the URL cannot be parsed (e.g. an unbalanced IPv6 bracket).
  """
  if "//" not in url:
    url = "//" + url
  return (urllib.parse.urlsplit(url).hostname or "").rstrip(".")


class URLFilter:
  """Drops documents by URL: blocked domain (or a subdomain of one), banned or soft-banned URL words.

  Reasons: "blocked_domain" (detail: the host), "banned_url_word" (the word), "soft_banned_url_words"
  (the matching words), "invalid_url" (the parse error), "missing_url" (only with `drop_missing_url`).
  """

  def __init__(self, config: ml_collections.ConfigDict):
    """Loads the three list files named by `config` (the `url_filter` subtree).

    Raises:
      FileNotFoundError: a list file is missing (names the config key and the path).
      ValueError: `soft_banned_min_matches` is below 1.
    """
    self.blocked_domains = frozenset(
        d.strip(".") for d in load_list(config.blocked_domains_file, "url_filter.blocked_domains_file"))
    self.banned_words = load_list(config.banned_words_file, "url_filter.banned_words_file")
    self.soft_banned_words = load_list(config.soft_banned_words_file, "url_filter.soft_banned_words_file")
    if int(config.soft_banned_min_matches) < 1:
      raise ValueError(f"url_filter.soft_banned_min_matches: expected an integer >= 1, got "
                       f"{config.soft_banned_min_matches!r}")
    self.soft_banned_min_matches = int(config.soft_banned_min_matches)
    self.drop_missing_url = bool(config.drop_missing_url)

  def _blocked_domain(self, host: str) -> str | None:
    """The blocked domain that `host` is or is a subdomain of, if any (one set lookup per label)."""
    labels = host.split(".")
    for start in range(len(labels)):
      candidate = ".".join(labels[start:])
      if candidate in self.blocked_domains:
        return candidate
    return None

  def __call__(self, doc: Document) -> Document | Drop:
    if not doc.url:
      return Drop("missing_url") if self.drop_missing_url else doc
    try:
      host = url_host(doc.url)
    except ValueError as e:
      return Drop("invalid_url", str(e)[:200])
    if host and self._blocked_domain(host) is not None:
      return Drop("blocked_domain", host)
    words = _URL_WORD.findall(doc.url.lower())
    soft_matches = []
    for word in words:
      if word in self.banned_words:
        return Drop("banned_url_word", word)
      if word in self.soft_banned_words:
        soft_matches.append(word)
    if len(soft_matches) >= self.soft_banned_min_matches:
      return Drop("soft_banned_url_words", ", ".join(soft_matches))
    return doc
