"""SES email templates in a real LMDB spool (relay/sesapi/templates.py): create, get, update,
delete and list with SES's paging, name and content checks naming the field, the tenant that
owns a template, the compiled cache, test rendering, and a restart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.clock import FakeClock
from relay.queue.store import QueueStore
from relay.sesapi.render import RenderingFailure, TemplateDataError, TemplateError
from relay.sesapi.templates import (
    TemplateExists,
    TemplateNotFound,
    TemplateStore,
    TemplateStoreError,
)

SUBJECT = "Greetings, {{name}}!"
TEXT = "Dear {{name}},\r\nYour favorite animal is {{favoriteanimal}}."
HTML = "<h1>Hello {{name}},</h1><p>Your favorite animal is {{favoriteanimal}}.</p>"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(tmp_path: Path, clock: FakeClock) -> Iterator[QueueStore]:
    q = QueueStore(tmp_path / "q", clock, map_size=1 << 24)
    yield q
    q.close_sync()


@pytest.fixture
def store(queue: QueueStore, clock: FakeClock) -> TemplateStore:
    return TemplateStore(queue, clock)


def test_create_get_update_delete(store: TemplateStore, clock: FakeClock) -> None:
    made = store.queue.write_now(store.create_op("MyTemplate", SUBJECT, TEXT, HTML))
    assert made.created_at == made.updated_at == clock.now()
    got = store.get("MyTemplate")
    assert (got.subject, got.text, got.html) == (SUBJECT, TEXT, HTML)
    with pytest.raises(TemplateExists, match=r"Template MyTemplate already exists\."):
        store.queue.write_now(store.create_op("MyTemplate", "s", "t", None))
    clock.advance(60)
    new = store.queue.write_now(store.update_op("MyTemplate", "Hi, {{name}}!", None, "<p/>"))
    assert new.created_at == made.created_at and new.updated_at == clock.now()
    assert (store.get("MyTemplate").subject, store.get("MyTemplate").text) == \
        ("Hi, {{name}}!", None)
    store.queue.write_now(store.delete_op("MyTemplate"))
    with pytest.raises(TemplateNotFound, match=r"Template MyTemplate does not exist\."):
        store.get("MyTemplate")
    with pytest.raises(TemplateNotFound):
        store.queue.write_now(store.update_op("MyTemplate", "s", "t", None))
    with pytest.raises(TemplateNotFound):
        store.queue.write_now(store.delete_op("MyTemplate"))


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "dot.name", "ünï", None])
def test_names_follow_ses_rules(store: TemplateStore, name: object) -> None:
    with pytest.raises(TemplateStoreError, match=r"^TemplateName: expected 1-64 letters"):
        store.create_op(name, "s", "t", None)  # type: ignore[arg-type]
    store.queue.write_now(store.create_op("Ok_name-64" + "x" * 54, "s", "t", None))


def test_content_is_checked_before_it_is_stored(store: TemplateStore) -> None:
    with pytest.raises(TemplateStoreError,
                       match=r"^TemplateContent\.Subject: The subject must be specified\."):
        store.create_op("t1", None, "t", None)
    with pytest.raises(TemplateError, match="needs a Text or an Html part"):
        store.create_op("t1", "s", None, None)
    with pytest.raises(TemplateError, match=r"^TemplateContent\.Html: '\{\{#each\}\}' opened "
                                            "at line 2 is never closed"):
        store.create_op("t1", "s", None, "<ul>\n{{#each items}}<li>{{this}}</li>")
    with pytest.raises(TemplateError, match=r"^TemplateContent\.Text: "):
        store.update_op("t1", "s", "{{#if}}", None)
    assert store.list() == ([], None)


def test_list_pages_as_ses_does(store: TemplateStore, clock: FakeClock) -> None:
    names = [f"tpl-{i:02d}" for i in range(23)]
    for name in reversed(names):
        store.queue.write_now(store.create_op(name, "s", "t", None))
        clock.advance(1)
    page, token = store.list()
    assert [t.name for t in page] == names[:10] and token is not None  # 10 by default
    seen = [t.name for t in page]
    while token is not None:
        page, token = store.list(page_size=7, next_token=token)
        seen += [t.name for t in page]
    assert seen == names
    everything, token = store.list(page_size=100)
    assert len(everything) == 23 and token is None
    for bad in (0, 101, True, "5"):
        with pytest.raises(TemplateStoreError, match=r"^PageSize: expected 1-100"):
            store.list(page_size=bad)  # type: ignore[arg-type]
    with pytest.raises(TemplateStoreError, match=r"^NextToken: not a token"):
        store.list(next_token="%%%")


def test_a_page_ends_exactly_at_the_last_template(store: TemplateStore) -> None:
    for name in ("a", "b", "c", "d"):
        store.queue.write_now(store.create_op(name, "s", "t", None))
    page, token = store.list(page_size=2)
    page2, token2 = store.list(page_size=2, next_token=token)
    assert [t.name for t in page + page2] == ["a", "b", "c", "d"]
    assert token2 is None


def test_tenants_see_their_own_and_shared_templates(store: TemplateStore) -> None:
    w = store.queue.write_now
    w(store.create_op("shared", "s", "t", None))  # the operator or the default tenant
    w(store.create_op("acme-welcome", "s", "t", None, tenant="acme"))
    w(store.create_op("beta-welcome", "s", "t", None, tenant="beta"))
    assert store.get("acme-welcome").tenant == "acme"
    assert [t.name for t in store.list(tenant="acme")[0]] == ["acme-welcome", "shared"]
    assert [t.name for t in store.list(tenant="default")[0]] == ["shared"]
    assert len(store.list()[0]) == 3  # the operator sees all
    with pytest.raises(TemplateNotFound):
        store.get("beta-welcome", tenant="acme")
    with pytest.raises(TemplateNotFound):
        w(store.delete_op("beta-welcome", tenant="acme"))
    with pytest.raises(TemplateStoreError, match="shared and can be changed only by"):
        w(store.update_op("shared", "s2", "t", None, tenant="acme"))
    with pytest.raises(TemplateExists):  # one namespace, as one SES account
        w(store.create_op("beta-welcome", "s", "t", None, tenant="acme"))
    w(store.update_op("shared", "s2", "t", None, tenant="default"))
    w(store.delete_op("acme-welcome", tenant="acme"))
    assert store.get("shared").subject == "s2"


def test_test_render_stored_or_given_content(store: TemplateStore) -> None:
    store.queue.write_now(store.create_op("MyTestTemplate", SUBJECT, TEXT, HTML))
    data = json.dumps({"name": "John", "favoriteanimal": "Lion"})
    out = store.test_render(data, name="MyTestTemplate")
    assert out.subject == "Greetings, John!"
    assert out.text == "Dear John,\r\nYour favorite animal is Lion."
    assert out.html == "<h1>Hello John,</h1><p>Your favorite animal is Lion.</p>"
    with pytest.raises(RenderingFailure) as e:
        store.test_render(json.dumps({"name": "John"}), name="MyTestTemplate")
    assert e.value.message == "Attribute 'favoriteanimal' is not present in the rendering data."
    assert e.value.template_name == "MyTestTemplate"
    with pytest.raises(TemplateNotFound):
        store.test_render(data, name="Nope")
    with pytest.raises(TemplateDataError):
        store.test_render("[]", name="MyTestTemplate")
    given = store.test_render(data, content=("Hi {{name}}", None, "<b>{{favoriteanimal}}</b>"))
    assert (given.subject, given.html) == ("Hi John", "<b>Lion</b>")


def test_a_changed_template_is_compiled_again(store: TemplateStore, clock: FakeClock) -> None:
    store.queue.write_now(store.create_op("t", "v1 {{x}}", "t", None))
    _, first = store.compiled("t")
    assert store.compiled("t")[1] is first  # kept
    clock.advance(1)
    store.queue.write_now(store.update_op("t", "v2 {{x}}", "t", None))
    assert store.test_render('{"x": 1}', name="t").subject == "v2 1"


def test_templates_survive_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    q = QueueStore(tmp_path / "q", clock, map_size=1 << 24)
    TemplateStore(q, clock).queue.write_now(
        TemplateStore(q, clock).create_op("keep", SUBJECT, TEXT, HTML, tenant="acme"))
    q.close_sync()
    q = QueueStore(tmp_path / "q", clock, map_size=1 << 24)
    try:
        kept = TemplateStore(q, clock).get("keep", tenant="acme")
        assert (kept.subject, kept.tenant) == (SUBJECT, "acme")
    finally:
        q.close_sync()


def test_a_request_template_by_name_arn_or_inline_content(store: TemplateStore) -> None:
    from relay.sesapi.render import render
    from relay.sesapi.templates import request_template

    store.queue.write_now(store.create_op("MyTemplate", SUBJECT, TEXT, HTML))
    data = json.dumps({"name": "Ann", "favoriteanimal": "cat"})
    by_name = request_template(store, {"TemplateName": "MyTemplate", "TemplateData": data})
    by_arn = request_template(store, {
        "TemplateArn": "arn:aws:ses:us-east-1:123456789012:template/MyTemplate",
        "TemplateData": data})
    for got in (by_name, by_arn):
        assert got.name == "MyTemplate"
        assert render(got.compiled, got.data).subject == "Greetings, Ann!"
    inline = request_template(store, {"TemplateContent": {"Subject": "Hi {{name}}",
                                                          "Text": "x"},
                                      "TemplateData": data})
    assert inline.name == "" and render(inline.compiled, inline.data).subject == "Hi Ann"
    with pytest.raises(TemplateError, match=r"^Content\.Template\.TemplateContent\.Text: "
                                            r"Template contains unsupported operations\."):
        request_template(store, {"TemplateContent": {"Subject": "s",
                                                     "Text": "{{#if a}}b{{/if}}"}})
    with pytest.raises(TemplateNotFound):
        request_template(store, {"TemplateName": "Other"})
    with pytest.raises(TemplateStoreError, match="exactly one of"):
        request_template(store, {"TemplateName": "MyTemplate",
                                 "TemplateContent": {"Subject": "s", "Text": "t"}})
    with pytest.raises(TemplateDataError, match=r"^Content\.Template\.TemplateData: "):
        request_template(store, {"TemplateName": "MyTemplate", "TemplateData": "nope"})
    with pytest.raises(TemplateStoreError, match=r"^Content\.Template\.TemplateArn: expected"):
        request_template(store, {"TemplateArn": "MyTemplate"})
    # No TemplateData: no data, so the first attribute the template outputs is missing.
    with pytest.raises(RenderingFailure, match="Attribute 'name' is not present"):
        got = request_template(store, {"TemplateName": "MyTemplate"})
        render(got.compiled, got.data, template_name=got.name)
