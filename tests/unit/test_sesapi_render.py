"""SES template rendering (relay/sesapi/render.py): SES's documented examples, its missing
attribute failure, no HTML escaping, Handlebars' blocks and whitespace rules, inline content's
simple substitutions, and hostile templates and data that must stay bounded."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.sesapi import render as R
from relay.sesapi.render import (
    RenderingFailure,
    TemplateDataError,
    TemplateError,
    compile_template,
    merge_data,
    parse_data,
    render,
    render_template,
)

# The recipient data of SES's "Advanced email personalization" page.
SES_DATA: dict[str, Any] = {
    "meta": {"userId": "51806220607"},
    "contact": {"firstName": "Anaya", "lastName": "Iyengar", "city": "Bengaluru",
                "country": "India", "postalCode": "560052"},
    "subscription": [{"interest": "Sports"}, {"interest": "Travel"},
                     {"interest": "Cooking"}],
}


def html(source: str, data: dict[str, Any], **kw: Any) -> str:
    out = render(compile_template("s", None, source), data, **kw).html
    assert out is not None
    return out


def text(source: str, data: dict[str, Any]) -> str:
    out = render(compile_template("s", source, None), data).text
    assert out is not None
    return out


# ---------------------------------------------------------------- SES's examples

def test_nested_attributes_as_ses_documents_them() -> None:
    out = render(compile_template("Hello {{contact.firstName}}!",
                                  "{{contact.city}}, {{contact.country}} {{meta.userId}}",
                                  None), SES_DATA)
    assert out.subject == "Hello Anaya!"
    assert out.text == "Bengaluru, India 51806220607"
    assert out.html is None


def test_each_over_the_documented_subscription_list() -> None:
    source = ("<p>You have subscribed to:</p>\n<ul>\n{{#each subscription}}\n"
              "  <li>{{interest}}</li>\n{{/each}}\n</ul>")
    # The #each lines stand alone, so they leave no blank lines (Handlebars' rule).
    assert html(source, SES_DATA) == ("<p>You have subscribed to:</p>\n<ul>\n"
                                      "  <li>Sports</li>\n  <li>Travel</li>\n"
                                      "  <li>Cooking</li>\n</ul>")


def test_if_else_on_an_attribute_present_or_not() -> None:
    source = ("{{#if contact.city}}Your city: {{contact.city}}{{else}}"
              "Tell us your city{{/if}}")
    assert html(source, SES_DATA) == "Your city: Bengaluru"
    assert html(source, {"contact": {}}) == "Tell us your city"


def test_inline_partial_as_ses_documents_it() -> None:
    source = ('{{#* inline "fullName"}}{{firstName}} {{lastName}}{{/inline}}'
              "Hello {{> fullName}}!")
    assert html(source, {"firstName": "Anaya", "lastName": "Iyengar"}) == \
        "Hello Anaya Iyengar!"


def test_if_inside_each_as_checked_against_ses() -> None:
    """The template and data of a test its authors ran against SES itself."""
    source = ("{{#each items}} {{name}} is {{#if best}}the best{{else}}a {{type}}{{/if}}, "
              "{{/each}}")
    data = {"items": [{"type": "dog", "name": "bobby", "best": True},
                      {"type": "cat", "name": "pedro", "best": False}]}
    out = html(source, data)
    assert "bobby is the best" in out and "pedro is a cat" in out


def test_a_missing_attribute_fails_with_ses_message() -> None:
    tpl = compile_template("Greetings, {{name}}!",
                           "Dear {{name}},\r\nYour favorite animal is {{favoriteanimal}}.",
                           "<h1>Hello {{name}},</h1><p>{{favoriteanimal}}</p>")
    with pytest.raises(RenderingFailure) as e:
        render(tpl, {"name": "John"}, template_name="MyTemplate")
    assert e.value.message == "Attribute 'favoriteanimal' is not present in the rendering data."
    assert e.value.template_name == "MyTemplate"
    # Extra attributes are no error; spacing inside the braces is ignored.
    out = render(compile_template("{{  name  }}", "x", None),
                 {"name": "John", "favoritenumber": "10"})
    assert out.subject == "John"


def test_a_null_attribute_fails_like_a_missing_one() -> None:
    with pytest.raises(RenderingFailure, match="Attribute 'website' is not present"):
        text("{{website}}", {"website": None})


def test_a_missing_nested_attribute_is_named_by_its_path() -> None:
    with pytest.raises(RenderingFailure,
                       match=r"Attribute 'contact\.middleName' is not present"):
        text("{{contact.middleName}}", SES_DATA)
    with pytest.raises(RenderingFailure, match="Attribute 'interest' is not present"):
        text("{{#each subscription}}{{interest}}{{/each}}", {"subscription": [{}]})


def test_conditions_on_missing_attributes_are_false_not_failures() -> None:
    assert text("{{#if a}}A{{/if}}{{#unless b}}B{{/unless}}{{#each c}}C{{else}}none{{/each}}"
                "{{#with d}}D{{else}}no d{{/with}}", {}) == "Bnone" + "no d"
    # Nor is a missing value in a branch that is not taken.
    assert text("{{#if a}}{{nothere}}{{/if}}ok", {}) == "ok"


# ---------------------------------------------------------------- escaping

def test_ses_does_not_escape_html() -> None:
    data = {"x": "<b>Tom & \"Jerry\"</b>"}
    tpl = compile_template("{{x}}", "{{x}}", "{{x}}|{{{x}}}|{{&x}}")
    out = render(tpl, data)
    assert out.subject == out.text == data["x"]
    assert out.html == "|".join([data["x"]] * 3)


def test_html_escape_when_asked_escapes_double_braces_in_html_only() -> None:
    data = {"x": "<a href='u'>&=`"}
    out = render(compile_template("{{x}}", "{{x}}", "{{x}}|{{{x}}}"), data, html_escape=True)
    assert out.html == "&lt;a href&#x3D;&#x27;u&#x27;&gt;&amp;&#x3D;&#x60;|" + data["x"]
    assert out.subject == out.text == data["x"]


# ---------------------------------------------------------------- Handlebars

def test_each_variables_this_and_parent_paths() -> None:
    data = {"tag": "!", "list": ["a", "b", "c"], "obj": {"k1": 1, "k2": 2.5}}
    assert text("{{#each list}}{{@index}}{{this}}{{#if @first}}F{{/if}}"
                "{{#if @last}}L{{/if}}{{../tag}} {{/each}}", data) == "0aF! 1b! 2cL! "
    assert text("{{#each obj}}{{@key}}={{.}};{{/each}}", data) == "k1=1;k2=2.5;"
    assert text("{{list.length}} {{list.[1]}} {{list.2}} {{@root.tag}}", data) == "3 b c !"


def test_else_if_chains_unless_and_with() -> None:
    source = "{{#if a}}A{{else if b}}B{{else unless c}}notC{{else}}C{{/if}}"
    assert text(source, {"a": 1}) == "A"
    assert text(source, {"b": "x"}) == "B"
    assert text(source, {}) == "notC"
    assert text(source, {"c": True}) == "C"
    assert text("{{#with contact}}{{firstName}} {{../meta.userId}}{{/with}}", SES_DATA) == \
        "Anaya 51806220607"


def test_truthiness_and_value_printing_follow_handlebars() -> None:
    falsies: tuple[Any, ...] = (False, 0, 0.0, "", [], None)
    truthies: tuple[Any, ...] = (True, 1, "0", [0], {})
    for falsy in falsies:
        assert text("{{#if v}}T{{else}}F{{/if}}", {"v": falsy}) == "F"
    for truthy in truthies:
        assert text("{{#if v}}T{{else}}F{{/if}}", {"v": truthy}) == "T"
    data = {"t": True, "n": 3, "f": 1.0, "g": 0.5, "l": [1, "a"], "o": {"a": 1}}
    assert text("{{t}} {{n}} {{f}} {{g}} {{l}} {{o}}", data) == \
        "true 3 1 0.5 1,a [object Object]"


def test_whitespace_control_comments_and_escaped_braces() -> None:
    assert text("a  {{~x~}}  b", {"x": "X"}) == "aXb"
    assert text("a {{! note }}b{{!-- {{not}} a tag --}}c", {}) == "a bc"
    assert text("\\{{literal}} {{x}}", {"x": 1}) == "{{literal}} 1"
    assert text("line1\n  {{#if x}}\nyes\n  {{/if}}\nline2", {"x": 1}) == \
        "line1\nyes\nline2"


# ---------------------------------------------------------------- parse errors

@pytest.mark.parametrize("source, reason", [
    ("{{#if a}}x", r"'\{\{#if\}\}' opened at line 1 is never closed"),
    ("x\n{{#if a}}{{/each}}", r"'\{\{/each\}\}' closes nothing open \(expected '\{\{/if\}\}'\) "
                              r"at line 2"),
    ("{{#loop a}}{{/loop}}", "block helper '#loop' is not supported"),
    ("{{format a b}}", "helper 'format' is not supported"),
    ("{{else}}", r"'\{\{else\}\}' outside"),
    ("{{name", r"unclosed '\{\{' at line 1"),
    ("{{a..b}}", "cannot read 'a..b'"),
])
def test_a_template_that_does_not_parse_names_the_field(source: str, reason: str) -> None:
    with pytest.raises(TemplateError, match=r"^TemplateContent\.Html: " + reason):
        compile_template("s", None, source)


def test_a_template_needs_a_body_and_a_bounded_size() -> None:
    with pytest.raises(TemplateError, match="needs a Text or an Html part"):
        compile_template("s", None, None)
    with pytest.raises(TemplateError, match="at most 512000 bytes"):
        compile_template("s", "x" * 300_000, "y" * 300_000)


def test_inline_content_allows_only_simple_substitutions() -> None:
    ok = compile_template("Hi {{name}}", "{{a.b}} {{{raw}}}", None, inline=True)
    assert render(ok, {"name": "N", "a": {"b": 1}, "raw": "<r>"}).text == "1 <r>"
    for source in ("{{#if x}}y{{/if}}", "{{#each x}}{{/each}}", "{{> p}}"):
        with pytest.raises(TemplateError, match=r"Template contains unsupported operations\."):
            compile_template("s", source, None, inline=True)


# ---------------------------------------------------------------- data

def test_template_data_must_be_a_json_object_within_limits() -> None:
    assert parse_data('{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
    for bad, reason in (("[1]", "expected a JSON object, got list"),
                        ("{nope", "not valid JSON"),
                        ('{"a": "' + "x" * 262_144 + '"}', r"262153 characters; at most 262144")):
        with pytest.raises(TemplateDataError, match="^TemplateData: " + reason):
            parse_data(bad)


def test_deeply_nested_data_is_refused() -> None:
    with pytest.raises(TemplateDataError, match="nested deeper than 64"):
        parse_data('{"a":' + "[" * 100 + "]" * 100 + "}")
    with pytest.raises(TemplateDataError):  # deeper than the JSON decoder goes
        parse_data('{"a":' + "[" * 200_000 + "]" * 200_000 + "}")


def test_bulk_replacement_data_merges_key_by_key() -> None:
    default = {"name": "friend", "shop": {"city": "Paris", "open": True}, "items": [1, 2]}
    merged = merge_data(default, {"shop": {"city": "Lyon"}, "items": [3]})
    assert merged == {"name": "friend", "shop": {"city": "Lyon", "open": True}, "items": [3]}
    assert default["shop"] == {"city": "Paris", "open": True}  # the default is not changed


def test_render_template_does_all_three_steps() -> None:
    out = render_template("Hi {{n}}", None, "<p>{{n}}</p>", json.dumps({"n": "A"}))
    assert (out.subject, out.text, out.html) == ("Hi A", None, "<p>A</p>")


def test_a_subject_rendered_with_a_line_break_fails() -> None:
    """A header injection through the data: the subject may not gain a second line."""
    with pytest.raises(RenderingFailure, match="subject contains a line break"):
        render(compile_template("Hi {{n}}", "x", None), {"n": "A\r\nBcc: victim@example.com"})


# ---------------------------------------------------------------- hostile templates

def test_blocks_nested_past_the_limit_are_refused_at_parse() -> None:
    deep = "{{#if a}}" * (R.MAX_DEPTH + 1) + "x" + "{{/if}}" * (R.MAX_DEPTH + 1)
    with pytest.raises(TemplateError, match="nested deeper than 64"):
        compile_template("s", deep, None)
    ok = "{{#if a}}" * (R.MAX_DEPTH - 1) + "x" + "{{/if}}" * (R.MAX_DEPTH - 1)
    assert text(ok, {"a": 1}) == "x"


def test_a_partial_that_calls_itself_stops_at_the_depth_limit() -> None:
    source = '{{#*inline "p"}}a{{> p}}{{/inline}}{{> p}}'
    with pytest.raises(RenderingFailure, match="nested deeper than 64"):
        text(source, {})


def test_an_undefined_partial_fails_the_render() -> None:
    with pytest.raises(RenderingFailure, match="The partial nope could not be found"):
        text("{{> nope}}", {})


def test_partials_that_double_their_output_stop_at_the_output_limit() -> None:
    """Each level calls the one below twice: 2**40 copies unless bounded."""
    defs = ['{{#*inline "p0"}}' + "x" * 64 + "{{/inline}}"]
    for i in range(1, 41):
        defs.append(f'{{{{#*inline "p{i}"}}}}{{{{> p{i - 1}}}}}{{{{> p{i - 1}}}}}{{{{/inline}}}}')
    with pytest.raises(RenderingFailure, match="exceeds 10485760 characters"):
        text("".join(defs) + "{{> p40}}", {})


def test_nested_each_over_large_lists_stops_at_the_step_limit() -> None:
    """Three nested loops over 2,000 items with no output: 8e9 visits unless bounded."""
    data = {"l": list(range(2000))}
    source = "{{#each l}}{{#each ../l}}{{#each ../../l}}{{/each}}{{/each}}{{/each}}"
    with pytest.raises(RenderingFailure, match="more than 1000000 steps"):
        text(source, data)


def test_many_tags_parse_in_one_pass() -> None:
    """Half a megabyte of tags of every kind parses (and renders) with no quadratic
    search: raw tags, comments and plain ones."""
    unit = "{{{a}}}{{!-- c --}}{{a}}."
    source = unit * (R.MAX_TEMPLATE_BYTES // len(unit) - 1)
    out = text(source, {"a": "z"})
    assert out.count("zz.") == source.count(unit)


# ---------------------------------------------------------------- any input

_PIECES = ["{{", "}}", "{{{", "}}}", "~", "#", "/", "if ", "each ", "with ", "unless ",
           "else", "this", "../", "@index", "@root.", ".", "a", "b", "[x y]", '"q"', "> p",
           '#*inline "p"', "!--", "--", "!", "&", "^", " ", "\n", "\\", "0", "length"]


@given(st.lists(st.sampled_from(_PIECES), max_size=40))
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_template_parses_or_is_refused_and_renders_or_fails_cleanly(
        pieces: list[str]) -> None:
    """Whatever the caller sends: a TemplateError, a RenderingFailure or text, never
    another exception."""
    source = "".join(pieces)
    try:
        tpl = compile_template("s", source, source)
    except TemplateError:
        return
    for data in ({}, {"a": [1, {"b": 2}], "b": {"a": "x"}, "x y": True}):
        with contextlib.suppress(RenderingFailure):
            render(tpl, data)
