"""PII redaction: e-mail addresses, phone numbers, IP addresses, card numbers and SSNs become placeholders.

A document stage: every match of a kind listed in `config.pii.kinds` is replaced by
`config.pii.placeholder.format(kind=KIND)` (``<EMAIL>``, ``<PHONE>``, ``<IP>``,
``<CREDIT_CARD>``, ``<SSN>``) and counted in ``metadata["edits"]``. Documents are never
dropped. Each kind is one precompiled regular expression applied in one pass, in the
order email, credit_card, ssn, phone, ip (longer, more specific patterns first, so a
card number is never half-redacted as something else).

The rules, and where their limits come from:

* email: the dot-atom form of RFC 5322 (local part of letters, digits and ``._%+-``,
  dotted domain ending in an alphabetic top-level domain of 2+ letters).
* phone: North American Numbering Plan numbers, whose area code and exchange start with
  2-9 (NANP rules), written ``(415) 555-0132``, ``415-555-0132``, ``415.555.0132`` (one
  separator used throughout) or with a ``+1`` / ``1`` country code, e.g.
  ``+1 415 555 0132``. Space-separated triples are accepted only after a country code,
  because runs of plain numbers (``256 512 1024``) are common in technical text.
  International numbers are ``+CC`` followed by at least one separated group, 8-15 digits
  in all (ITU-T E.164 allows at most 15); dot-separated ones need two or more groups after
  the country code so that signed floats (``+3.14159265``) are not taken for phones.
* ip: IPv4 with every octet 0-255 and no leading zeros, not part of a longer dotted
  number (``1.2.3.4.5``) and not preceded by a word that announces a version or section
  number (``version 1.2.3.4``, ``Python 3.12.0.1``, ``v1.2.3.4``, ``section-1.2.3.4``,
  ``__version__ = "1.2.3.4"``): four-part version numbers are otherwise indistinguishable
  from addresses, and a bare one (``['7.1.4.34', 1806]``) is redacted. IPv6 in full
  (8 groups) or compressed form, validated by the standard library; a compressed address
  needs three or more groups, or two groups with one of 3+ hex digits and a hex letter,
  so Python slices (``a[1::2]``, ``x[10::100]``) and clock times are not taken.
* credit_card: 13-19 digits (ISO/IEC 7812), contiguous or grouped 4-4-4-4(-3) / 4-6-5 /
  4-6-4 by spaces or dashes, starting with 2-6 (the issuer ranges of Visa, Mastercard,
  American Express, Diners, Discover, JCB and UnionPay), and accepted only when the Luhn
  check digit (ISO/IEC 7812-1 Annex B) is valid, so about nine in ten random digit runs
  are rejected.
* ssn: ``AAA-GG-SSSS`` with the area numbers the US Social Security Administration never
  issues (000, 666, 900-999), group 00 and serial 0000 excluded.

Every kind requires that a match is not glued to surrounding letters or digits, which keeps
dates (2024-01-15), times, floats, ISBNs, ranges, hex strings and byte counts intact.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Callable

import ml_collections

from data.corpus import Document

KINDS = ("email", "phone", "ip", "credit_card", "ssn")
# Order of the passes: card numbers and SSNs before phones and IPs, whose patterns are looser.
_PASS_ORDER = ("email", "credit_card", "ssn", "phone", "ip")

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,24}(?![\w-]|\.[A-Za-z0-9])")

# Not glued to a word or to a dotted number; grouped card numbers are also not part of a longer run of
# digit groups ("1234 5678 9012 3456 7890").
_NUMBER_START = r"(?<![\w.+-])"
_NUMBER_END = r"(?![\w-]|\.\d)"

_CARD = re.compile(
    _NUMBER_START
    + r"(?P<card>[2-6]\d{12,18}"
    r"|(?<!\d[ -])[2-6]\d{3}(?P<s1>[ -])\d{4}(?P=s1)\d{4}(?P=s1)\d{1,4}(?:(?P=s1)\d{1,3})?(?!(?P=s1)\d)"
    r"|(?<!\d[ -])3\d{3}(?P<s2>[ -])\d{6}(?P=s2)\d{4,5}(?!(?P=s2)\d))"
    + _NUMBER_END)

_SSN = re.compile(_NUMBER_START + r"(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}" + _NUMBER_END)

_NANP = r"[2-9]\d\d"
_PHONE = re.compile(
    r"(?<![\w.+-])(?:"
    # (415) 555-0132, optionally with a country code.
    rf"(?P<paren>(?:\+?1[ .-]?)?\({_NANP}\)[ .-]?{_NANP}[ .-]\d{{4}})"
    # +1 415 555 0132, 1-415-555-0132: any consistent separator after a country code.
    rf"|(?P<cc>\+?1[ .-]{_NANP}(?P<s1>[ .-]){_NANP}(?P=s1)\d{{4}})"
    # 415-555-0132, 415.555.0132: no country code, so no spaces.
    rf"|(?P<local>{_NANP}(?P<s2>[.-]){_NANP}(?P=s2)\d{{4}})"
    # +44 20 7946 0958: the digit count is checked in code.
    r"|(?P<intl>\+[1-9]\d{0,2}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){1,8})"
    r")(?![\w-]|\.\d)")
_PHONE_GROUP = re.compile(r"[ .-]?(?:\(\d{1,4}\)|\d{1,5})")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_HEX_GROUP = r"[0-9A-Fa-f]{1,4}"
_IP = re.compile(
    r"(?<![\w.:])(?:"
    rf"(?P<v6>(?:[0-9A-Fa-f]{{0,4}}:){{2,7}}(?:{_OCTET}(?:\.{_OCTET}){{3}}|{_HEX_GROUP})?)(?![\w:]|\.\w)"
    rf"|(?P<v4>{_OCTET}(?:\.{_OCTET}){{3}})(?!\w|\.\d)"
    r")")
# Words after which a four-part dotted number is a version / section number, not an address: the word (also
# plural or in an identifier such as __version__) then at most a few spaces / punctuation marks.
_VERSION_CONTEXT = re.compile(
    r"(?<![a-z])(?:version|ver|v|release|rev|revision|build|python|section|chapter|clause|step|figure|fig|table|"
    r"appendix|rule|item)(?:s|_+)?[^a-z0-9]{0,4}$", re.IGNORECASE)
_VERSION_CONTEXT_CHARS = 24


def luhn_valid(digits: str) -> bool:
  """Whether a string of decimal digits passes the Luhn (mod 10) check."""
  total = 0
  for position, char in enumerate(reversed(digits)):
    value = ord(char) - 48
    if position % 2:
      value *= 2
      if value > 9:
        value -= 9
    total += value
  return total % 10 == 0


class PIIRedaction:
  """Replaces personal data by placeholders; see the module docstring for the rules.

  Args:
    config: `config.pii`: `kinds` (a subset of KINDS), `placeholder` (a format string with `{kind}`).
  """

  def __init__(self, config: ml_collections.ConfigDict):
    kinds = tuple(config.kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
      raise ValueError(f"pii.kinds: unknown kind(s) {', '.join(map(repr, unknown))}; "
                       f"expected some of {', '.join(KINDS)}")
    try:
      self._placeholders = {k: config.placeholder.format(kind=k.upper()) for k in KINDS}
    except (KeyError, IndexError, AttributeError, ValueError) as e:
      raise ValueError(f"pii.placeholder: expected a format string whose only field is {{kind}}, got "
                       f"{config.placeholder!r} ({e})") from None
    self.kinds = tuple(k for k in _PASS_ORDER if k in kinds)

  def __call__(self, doc: Document) -> Document:
    """`doc` with its PII replaced and counted in metadata["edits"]; `doc` itself when nothing matched."""
    text = doc.text
    counts = {}
    for kind in self.kinds:
      text, count = self.redact_kind(kind, text)
      if count:
        counts[kind] = count
    if not counts:
      return doc
    edits = dict(doc.metadata.get("edits", {}))
    for kind, count in counts.items():
      edits[kind] = edits.get(kind, 0) + count
    return dataclasses.replace(doc, text=text, metadata={**doc.metadata, "edits": edits})

  def redact_kind(self, kind: str, text: str) -> tuple[str, int]:
    """(text with every `kind` match replaced by its placeholder, number of replacements)."""
    placeholder = self._placeholders[kind]
    count = 0

    def replace_if(accept: Callable[[re.Match], str | None]) -> Callable[[re.Match], str]:
      # `accept` returns the unredacted tail of the match (usually '') or None to keep the match as it is.
      def replace(match: re.Match) -> str:
        nonlocal count
        tail = accept(match)
        if tail is None:
          return match.group(0)
        count += 1
        return placeholder + tail
      return replace

    if kind == "email":
      text = _EMAIL.sub(replace_if(lambda m: ""), text)
    elif kind == "credit_card":
      text = _CARD.sub(replace_if(_accept_card), text)
    elif kind == "ssn":
      text = _SSN.sub(replace_if(lambda m: ""), text)
    elif kind == "phone":
      text = _PHONE.sub(replace_if(_accept_phone), text)
    else:
      text = _IP.sub(replace_if(_accept_ip), text)
    return text, count


def _accept_card(match: re.Match) -> str | None:
  digits = re.sub(r"[ -]", "", match.group("card"))
  return "" if 13 <= len(digits) <= 19 and luhn_valid(digits) else None


def _accept_phone(match: re.Match) -> str | None:
  number = match.group("intl")
  if number is None:
    return ""
  # The pattern is greedy: trailing groups that push the count past 15 digits are left in the text.
  country_code = re.match(r"\+[1-9]\d{0,2}", number)
  groups = [country_code.group(0)[1:]] + [g.group(0) for g in _PHONE_GROUP.finditer(number, country_code.end())]
  digits = [len(re.sub(r"\D", "", g)) for g in groups]
  kept = len(groups)
  while kept > 1 and sum(digits[:kept]) > 15:
    kept -= 1
  separated = [g for g in groups[1:kept] if g[0] in " .-"]
  if not 8 <= sum(digits[:kept]) <= 15 or not separated:
    return None
  if any(g[0] == "." for g in separated) and len(separated) < 2:
    return None
  return "".join(groups[kept:])


def _accept_ip(match: re.Match) -> str | None:
  if match.group("v4") is not None:
    before = match.string[max(0, match.start() - _VERSION_CONTEXT_CHARS):match.start()]
    return None if _VERSION_CONTEXT.search(before) else ""
  address = match.group("v6")
  try:
    ipaddress.IPv6Address(address)
  except ValueError:
    return None
  if "::" not in address:
    return ""
  groups = [g for g in re.split(r"[:.]", address) if g]
  if len(groups) >= 3:
    return ""
  long_group = any(len(g) >= 3 for g in groups)
  hex_letter = re.search(r"[A-Fa-f]", address) is not None
  return "" if len(groups) == 2 and long_group and hex_letter else None
