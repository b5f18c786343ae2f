"""HTML extraction: turns the raw HTML of a web record into plain text with Resiliparse.

Text extraction from the HTML of WARC records rather than the crawl's WET text follows
FineWeb (Penedo et al. 2024, "text extraction"), which found extracted text to train better
models; Resiliparse's main-content heuristics remove navigation, headers, footers and
similar boilerplate (config `html_extraction.main_content`). Block structure is kept as
line breaks and blank lines, which the line-based quality rules of the later stages rely on.
"""

from __future__ import annotations

import dataclasses

import ml_collections
from resiliparse.extract import html2text

from data.corpus import Document
from data.stages import Drop


class HTMLExtraction:
  """Fills `text` from `html` and clears `html`; documents without HTML pass unchanged.

  Reasons: "no_text" (nothing but whitespace extracted), "extraction_failed" (the parser's error).
  """

  def __init__(self, config: ml_collections.ConfigDict):
    """Reads `main_content`, `keep_alt_texts` and `keep_list_bullets` of `config` (the `html_extraction` subtree)."""
    self.main_content = bool(config.main_content)
    self.alt_texts = bool(config.keep_alt_texts)
    self.list_bullets = bool(config.keep_list_bullets)

  def __call__(self, doc: Document) -> Document | Drop:
    if doc.html is None:
      return doc
    try:
      text = html2text.extract_plain_text(doc.html, preserve_formatting=True, main_content=self.main_content,
                                          alt_texts=self.alt_texts, list_bullets=self.list_bullets)
    except Exception as e:  # pylint: disable=broad-except  # one malformed page must not stop a crawl
      return Drop("extraction_failed", f"{type(e).__name__}: {e}"[:200])
    text = text.strip()
    if not text:
      return Drop("no_text")
    return dataclasses.replace(doc, text=text, html=None)
