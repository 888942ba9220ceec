"""Dockerfile words expanded as BuildKit's shell lexer does (shellword.py): each modifier, glob
patterns with ``*``, ``?`` and escaped characters, quotes and the escape character, the names
reported as having no value, and the exact message of each syntax error (a Dockerfile error
line quotes it)."""

import pytest

from archfleet.shellword import expand

ENV = {"A": "a", "E": "", "P": "linux/arm/v7", "U": None, "S": "a*b?c", "D": "a.b.c", "1": "one", "N1": "x"}


@pytest.mark.parametrize("word,value", [
    # patterns: ? is one character, \x a literal x, / in a pattern escaped
    ("${P/a?m/X}", "linux/X/v7"), ("${P#l?n}", "ux/arm/v7"), (r"${S/\*/-}", "a-b?c"), (r"${S//\?/-}", "a*b-c"),
    (r"${S%\?c}", "a*b"), ("${S#a?}", "b?c"), (r"${P/arm\/v7/X}", "linux/X"),
    # the first match, or every match with //
    ("${D/./-}", "a-b.c"), ("${D//./-}", "a-b-c"), ("${P/linux/}", "/arm/v7"), ("${P/*/X}", "X"),
    # shortest and longest prefix and suffix
    ("${D%.*}", "a.b"), ("${D%%.*}", "a"), ("${D#*.}", "b.c"), ("${D##*.}", "c"),
    ("${P#*}", "linux/arm/v7"), ("${P##*}", ""), ("${P%*}", "linux/arm/v7"), ("${P%%*}", ""),
    ("${P#nomatch}", "linux/arm/v7"), ("${P%nomatch}", "linux/arm/v7"),
    # quotes and the escape character
    (r'"a\"b"', 'a"b'), (r'"a\$A"', "a$A"), (r'"a\\b"', "a\\b"), (r'"a\b"', "a\\b"), (r"a\\b", "a\\b"),
    ("a\\", "a"),
    # names
    ("$1x", "onex"), ("${1}", "one"), ("$N1", "x"), ("${A}$", "a$"), ("a${A}b${E}c", "aabc"),
    ("${A:-}", "a"), ("${A-$P}", "a"), ("${A:?oops}", "a"), ("${E?fine}", ""),
])
def test_a_word_expands_as_buildkit_expands_it(word, value):
    assert expand(word, ENV)[0] == value


@pytest.mark.parametrize("word,unmatched", [
    ("$@x", ("@",)), ("${U:+x}", ("U",)), ("${U:-${P%%/*}}", ("U",)), ("$U$U${V}", ("U", "V")), ("$A", ()),
])
def test_names_without_a_value_are_reported_once_each(word, unmatched):
    assert expand(word, ENV)[1] == unmatched


@pytest.mark.parametrize("word,message", [
    ("${U:?}", "U: is not allowed to be unset"),
    ("${E:?}", "E: is not allowed to be empty"),
    ("${U?gone}", "U: gone"),
    ("${U", "syntax error: missing '}'"),
    ("${", "syntax error: missing '}'"),
    ("${A/", "syntax error: missing '}'"),
    ("${P//}", "syntax error: missing '}'"),
    ("${}", "syntax error: bad substitution"),
    ("${:}", "syntax error: bad substitution"),
    ("${A:=x}", "unsupported modifier (=) in substitution"),
    ("'abc", "unexpected end of statement while looking for matching single-quote"),
    ('"abc', "unexpected end of statement while looking for matching double-quote"),
    ('"a\\', "unexpected end of statement while looking for matching double-quote"),
])
def test_each_syntax_error_has_buildkits_message(word, message):
    with pytest.raises(ValueError) as err:
        expand(word, ENV)
    assert str(err.value) == message


def test_the_escape_directive_changes_the_escape_character():
    assert expand("`$A", ENV, escape="`") == ("$A", ())
    assert expand('"`"x"', ENV, escape="`") == ('"x', ())
    assert expand("a\\b", ENV, escape="`") == ("a\\b", ())  # a backslash is then an ordinary character


def test_a_pattern_matches_across_newlines_in_the_value():
    assert expand("${N##*/}", {"N": "a\nb/c"}) == ("c", ())
