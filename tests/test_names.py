"""Name normalisation and the search keys that make one-typo search an equality join."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from casehub.services import names


@pytest.mark.parametrize(
    ("raw", "folded"),
    [
        ("Zoë", "zoe"),
        ("ZOË", "zoe"),
        ("José María", "jose maria"),
        ("ØSTERGÅRD", "ostergard"),
        ("Łukasz", "lukasz"),
        ("Straße", "strasse"),
        ("Æthelred", "aethelred"),
        ("İlkay", "ilkay"),
        ("Kad\u0131k\u00f6y", "kadikoy"),  # dotless i
        ("\uff2a\uff4f\uff48\uff4e", "john"),  # full-width letters (NFKD compatibility forms)
    ],
)
def test_fold_ignores_case_and_accents(raw, folded):
    assert names.fold(raw) == folded


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_folds_as_any_text_does(text):
    assert names.fold(text) == names._strip_marks(
        names._strip_marks(text).casefold().translate(names._FOLD)
    )


@pytest.mark.parametrize(
    ("name", "tokens"),
    [
        ("John", {"john"}),
        ("  Mary   Ann ", {"mary", "ann"}),
        ("O'Brien", {"obrien", "o", "brien"}),
        ("O\u2019Brien", {"obrien", "o", "brien"}),
        ("O\u00b4Brien", {"obrien", "o", "brien"}),
        ("Smith-Jones", {"smithjones", "smith", "jones"}),
        ("Jean-Luc D'Arcy", {"jeanluc", "jean", "luc", "darcy", "d", "arcy"}),
        ("--", set()),
    ],
)
def test_name_tokens(name, tokens):
    assert names.name_tokens(name) == tokens


@pytest.mark.parametrize(
    ("query", "tokens"),
    [
        ("John SMITH", ["john", "smith"]),
        ("O'Brien", ["obrien"]),
        ("Smith-Jones", ["smith", "jones"]),
        ("john john", ["john"]),
        ("' -", []),
    ],
)
def test_query_tokens(query, tokens):
    assert names.query_tokens(query) == tokens


def test_search_keys_are_the_token_and_its_deletions():
    assert names.search_keys("john") == {"john", "ohn", "jhn", "jon", "joh"}
    # Words under three letters are matched exactly, so they need no deletion keys.
    assert names.search_keys("li") == {"li"}


def test_subject_keys_say_which_are_whole_words():
    assert names.subject_key_kinds("Lia", "Wu", []) == {
        "lia": True,
        "ia": False,
        "la": False,
        "li": False,
        "wu": True,
    }
    # A key that is one name whole and a deletion of another is a whole word.
    kinds = names.subject_key_kinds("Jon", "Johns", ["John"])
    assert kinds["jon"] is True
    assert kinds["john"] is True  # whole, and a deletion of "johns"
    assert kinds["ohn"] is False


@given(
    given_name=st.text(alphabet="abcdeé' -", max_size=12),
    family_name=st.text(alphabet="abcdeé' -", max_size=12),
    aliases=st.lists(st.text(alphabet="abcde ", max_size=8), max_size=2),
)
def test_whole_word_keys_are_the_name_tokens(given_name, family_name, aliases):
    kinds = names.subject_key_kinds(given_name, family_name, aliases)
    assert set(kinds) == names.subject_keys(given_name, family_name, aliases)
    whole = {key for key, is_whole in kinds.items() if is_whole}
    assert whole == names.subject_tokens(given_name, family_name, aliases)


def test_short_words_tolerate_no_typo():
    assert not names.tolerates_typo("li")
    assert names.tolerates_typo("lia")


def test_tokens_are_capped_at_the_key_column_length():
    long_name = "ß" * 100  # folds to 200 letters
    (token,) = names.name_tokens(long_name)
    assert len(token) == names.MAX_KEY_LENGTH
    assert names.query_tokens(long_name) == [token]


@pytest.mark.parametrize(
    ("query", "name", "expected"),
    [
        ("john", "john", True),
        ("jonh", "john", True),  # neighbours swapped
        ("jon", "john", True),  # letter missing
        ("johnn", "john", True),  # letter extra
        ("jahn", "john", True),  # letter wrong
        ("jnoh", "john", False),  # two edits
        ("joan", "jonh", False),  # shares a deletion key, but two edits apart
        ("li", "lu", False),  # short words must match exactly
        ("lia", "li", True),
        ("jo", "jo", True),
    ],
)
def test_close(query, name, expected):
    assert names.close(query, name) is expected


def test_matches_needs_every_query_word():
    tokens = names.subject_tokens("John", "Smith", ["Little J"])
    assert names.matches(["jonh", "smiht"], tokens)
    assert names.matches(["little"], tokens)
    assert not names.matches(["john", "brown"], tokens)


words = st.text(alphabet="abcdefgh", min_size=1, max_size=12)


def _one_edit_variants(word: str, data: st.DataObject) -> str:
    kind = data.draw(st.sampled_from(["insert", "delete", "substitute", "swap"]))
    position = data.draw(st.integers(min_value=0, max_value=len(word)))
    letter = data.draw(st.sampled_from("abcdefghij"))
    if kind == "insert":
        return word[:position] + letter + word[position:]
    position = min(position, len(word) - 1)
    if kind == "delete":
        return word[:position] + word[position + 1 :]
    if kind == "substitute":
        return word[:position] + letter + word[position + 1 :]
    if position + 1 < len(word):
        return word[:position] + word[position + 1] + word[position] + word[position + 2 :]
    return word


@given(name=words, data=st.data())
def test_every_match_shares_a_key(name, data):
    """The index never misses: whatever `close` accepts, the key join finds, and a query word
    that tolerates no typo finds it among whole-word keys."""
    query = _one_edit_variants(name, data)
    assume(query and names.close(query, name))
    stored = names.subject_key_kinds(name, "x", [])
    shared = names.search_keys(query) & stored.keys()
    assert shared
    if not names.tolerates_typo(query):
        assert any(stored[key] for key in shared)


@given(query=st.text(alphabet="abcdefgh", min_size=1, max_size=2), name=words)
def test_a_short_word_finds_only_its_whole_word_key(query, name):
    """A word under three letters finds a name by whole-word keys exactly when `close`
    accepts it ("x", the family name, is outside the words' alphabet)."""
    assert not names.tolerates_typo(query)
    stored = names.subject_key_kinds(name, "x", [])
    found = any(stored.get(key) for key in names.search_keys(query))
    assert found == names.close(query, name)
