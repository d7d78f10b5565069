"""Name normalisation and the typo-tolerant search keys behind subject search."""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable

from rapidfuzz.distance import OSA

MAX_KEY_LENGTH = 100  # subject_name_keys.key is String(100)
FUZZY_MIN_LENGTH = 3  # shorter query words must match exactly: "Al" one typo away is everyone
MAX_EDITS = 1

# Letters that NFKD leaves whole (they are not a base letter plus a combining mark).
_FOLD = str.maketrans(
    {
        "ø": "o",
        "đ": "d",
        "ð": "d",
        "ł": "l",
        "ŀ": "l",
        "ħ": "h",
        "\u0131": "i",  # dotless i
        "ŧ": "t",
        "æ": "ae",
        "œ": "oe",
        "þ": "th",
    }
)
# Apostrophes join: O'Brien, O\u2019Brien and OBrien are one name. They are removed before NFKD,
# which would turn an acute accent used as an apostrophe into a space and a combining mark.
_APOSTROPHES = re.compile("['`\u2018\u2019\u02bc\u00b4]")
# Anything else that is not a letter or digit (hyphens, dots, commas) separates parts of a name.
_SEPARATORS = re.compile(r"[\W_]+")


def _strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def fold(text: str) -> str:
    """Case- and accent-insensitive form: "Zoë" → "zoe", "ØSTERGÅRD" → "ostergard"."""
    # Most names: nothing to decompose, and casefold is lower (search folds every candidate).
    if text.isascii():
        return text.lower()
    folded = _strip_marks(text).casefold().translate(_FOLD)
    # casefold can produce decomposable letters again (e.g. "ǰ"), so strip once more.
    return _strip_marks(folded)


def _parts(word: str) -> list[str]:
    return [p for p in _SEPARATORS.split(word) if p]


def _limit(token: str) -> str:
    return token[:MAX_KEY_LENGTH]


@functools.lru_cache(maxsize=65536)
def name_tokens(name: str) -> frozenset[str]:
    """The tokens a stored name is found by (memoised: names repeat, and a match or search
    folds every candidate's).

    Each word counts whole with its apostrophes and hyphens removed ("O'Brien" → "obrien",
    "Smith-Jones" → "smithjones") and also by its parts ("o", "brien"; "smith", "jones"), so
    "O Brien", "OBrien" and "Jones" all find what a caseworker would expect.
    """
    tokens: set[str] = set()
    for word in name.split():
        pieces = _parts(fold(_APOSTROPHES.sub(" ", word)))
        if not pieces:
            continue
        tokens.add(_limit("".join(pieces)))
        if len(pieces) > 1:
            tokens.update(_limit(p) for p in pieces)
        tokens.update(_limit(s) for s in _parts(fold(_APOSTROPHES.sub("", word))))
    return frozenset(tokens)


def query_tokens(query: str) -> list[str]:
    """The words of a search: apostrophes join ("O'Brien" → "obrien"), hyphens separate."""
    tokens: list[str] = []
    for word in query.split():
        for segment in _parts(fold(_APOSTROPHES.sub("", word))):
            token = _limit(segment)
            if token not in tokens:
                tokens.append(token)
    return tokens


def tolerates_typo(token: str) -> bool:
    """Whether a query word may be one edit away from the name it finds."""
    return len(token) >= FUZZY_MIN_LENGTH


def search_keys(token: str) -> set[str]:
    """The token and, when typos are tolerated for it, every one-deletion variant.

    Two tokens within one edit (insert, delete, substitute, or swap of neighbours) of each
    other always share a key, so candidates are found by indexed equality on any database.
    A word that tolerates no typo must equal a name token: its one key is looked up among
    whole-word keys only (`subject_key_kinds`), not among the deletions of longer names.
    """
    keys = {token}
    if tolerates_typo(token):
        keys.update(token[:i] + token[i + 1 :] for i in range(len(token)))
    return keys


def subject_tokens(given_name: str, family_name: str, aliases: Iterable[str]) -> set[str]:
    tokens = set(name_tokens(given_name))
    tokens |= name_tokens(family_name)
    for alias in aliases:
        tokens |= name_tokens(alias)
    return tokens


def subject_key_kinds(given_name: str, family_name: str, aliases: Iterable[str]) -> dict[str, bool]:
    """Every key stored in subject_name_keys for one subject, and whether it is a whole word
    (one of the subject's name tokens) rather than only a one-letter deletion of one: "Lia"
    stores "lia" whole and "ia", "la", "li" as deletions, so a search for "Li" (which must
    match exactly) need not look at every Lia, Ali and Eli."""
    tokens = subject_tokens(given_name, family_name, aliases)
    kinds: dict[str, bool] = {}
    for token in tokens:
        for key in search_keys(token):
            kinds[key] = key in tokens
    return kinds


def subject_keys(given_name: str, family_name: str, aliases: Iterable[str]) -> set[str]:
    """Every key stored in subject_name_keys for one subject."""
    return set(subject_key_kinds(given_name, family_name, aliases))


def close(query_token: str, name_token: str) -> bool:
    """Equal, or (for words of three letters or more) one edit apart; a swap of neighbours
    ("Jonh" for "John") counts as one edit."""
    if query_token == name_token:
        return True
    if not tolerates_typo(query_token):
        return False
    return OSA.distance(query_token, name_token, score_cutoff=MAX_EDITS) <= MAX_EDITS


def matches(tokens: Iterable[str], names: set[str]) -> bool:
    """Every query token is close to some name token of the subject."""
    return all(any(close(token, name) for name in names) for token in tokens)


def identifier_value(value: str) -> str:
    """An identifier's value as matching compares it: upper case, without spaces or hyphens
    ("ab 12-34 56c" and "AB123456C" are one National Insurance number). Migration 0015 does the
    same in SQL for what was stored before it."""
    return value.upper().replace(" ", "").replace("-", "")
