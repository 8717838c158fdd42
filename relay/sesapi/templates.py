"""SES email templates in the spool: sub-database "templates" of the queue's LMDB environment.

Key: the template name (SES's rule: 1-64 letters, digits, '_' or '-'; one namespace per
spool, as per SES account). Value: an `EmailTemplate` (msgpack) with SES's EmailTemplateContent
(Subject, Text, Html), when it was created and last updated, and the tenant that owns it
("" = shared: made by the default tenant or the operator). A tenant's caller sees its own
templates and the shared ones, and changes only its own; `tenant=None` is the operator (all).

Writes are ops for the store's group commit (`await queue.write(op)` in the server,
`queue.write_now(op)` in the CLI and tests), like relay/tenants/store.py. A template is
compiled (relay/sesapi/render.py) before it is stored, so one that cannot parse is refused at
CreateEmailTemplate/UpdateEmailTemplate with the field named, never at send time.

Errors map to SES's: TemplateNotFound -> NotFoundException, TemplateExists ->
AlreadyExistsException, TemplateLimit -> LimitExceededException, any other TemplateStoreError
(and render.TemplateError, render.TemplateDataError) -> BadRequestException.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from relay.clock import Clock
from relay.queue.store import QueueStore
from relay.sesapi import render
from relay.tenants.model import DEFAULT_TENANT

TEMPLATES_DB = "templates"
MAX_TEMPLATES = 20_000  # SES: email templates per account and region
DEFAULT_PAGE_SIZE = 10  # ListEmailTemplates without PageSize (SES)
MAX_PAGE_SIZE = 100
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_CACHE_SIZE = 256  # compiled templates kept (a send compiles its template once)


class EmailTemplate(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    tenant: str = ""  # the owning tenant; "" = shared


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(EmailTemplate)


class TemplateStoreError(ValueError):
    """A refused template operation (BadRequestException); the text names the field."""


class TemplateNotFound(TemplateStoreError):
    """NotFoundException."""


class TemplateExists(TemplateStoreError):
    """AlreadyExistsException."""


class TemplateLimit(TemplateStoreError):
    """LimitExceededException."""


def owner_of(tenant: str | None) -> str | None:
    """The owner recorded for a caller of `tenant` ("" for the default tenant); None stays
    None (the operator)."""
    if tenant is None:
        return None
    return "" if tenant in ("", DEFAULT_TENANT) else tenant


def check_name(name: object, field_name: str = "TemplateName") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise TemplateStoreError(f"{field_name}: expected 1-64 letters, digits, '_' or '-', "
                                 f"got {name!r}")
    return name


def check_content(subject: str | None, text: str | None, html: str | None, *,
                  inline: bool = False, prefix: str = "TemplateContent."
                  ) -> render.CompiledTemplate:
    """The compiled template, or render.TemplateError / TemplateStoreError naming the
    field. SES requires the subject, and a text or an HTML part."""
    for name, value in (("Subject", subject), ("Text", text), ("Html", html)):
        if value is not None and not isinstance(value, str):
            raise TemplateStoreError(f"{prefix}{name}: expected a string")
    if not subject:
        raise TemplateStoreError(f"{prefix}Subject: The subject must be specified.")
    return render.compile_template(subject, text, html, inline=inline, prefix=prefix)


def _visible(tpl: EmailTemplate, owner: str | None) -> bool:
    return owner is None or tpl.tenant in ("", owner)


def encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode("utf-8")).decode("ascii")


def decode_token(token: str) -> str:
    try:
        name = base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeError):
        raise TemplateStoreError(f"NextToken: not a token this API gave: {token!r}") from None
    if not _NAME.match(name):
        raise TemplateStoreError(f"NextToken: not a token this API gave: {token!r}")
    return name


class TemplateStore:
    """The templates of one spool (see the module docstring)."""

    def __init__(self, queue: QueueStore, clock: Clock) -> None:
        self.queue = queue
        self.clock = clock
        # (name, created_at, updated_at) -> compiled: a changed or recreated template misses
        self._cache: OrderedDict[tuple[str, float, float], render.CompiledTemplate] = \
            OrderedDict()

    def _db(self) -> Any:
        return self.queue.named_db(TEMPLATES_DB)

    # -------------------------------------------------------------- ops

    def create_op(self, name: str, subject: str | None, text: str | None,
                  html: str | None, *, tenant: str | None = "") -> Callable[[Any], EmailTemplate]:
        """CreateEmailTemplate. TemplateExists when the name is taken (by anyone)."""
        check_name(name)
        check_content(subject, text, html)
        now = self.clock.now()
        tpl = EmailTemplate(name, subject, text, html, created_at=now, updated_at=now,
                            tenant=owner_of(tenant) or "")
        db = self._db()

        def op(txn: Any) -> EmailTemplate:
            key = name.encode("ascii")
            if txn.get(key, db=db) is not None:
                raise TemplateExists(f"Template {name} already exists.")
            if txn.stat(db)["entries"] >= MAX_TEMPLATES:
                raise TemplateLimit(f"at most {MAX_TEMPLATES} templates can be stored")
            txn.put(key, _enc.encode(tpl), db=db)
            return tpl
        return op

    def update_op(self, name: str, subject: str | None, text: str | None,
                  html: str | None, *, tenant: str | None = None
                  ) -> Callable[[Any], EmailTemplate]:
        """UpdateEmailTemplate: the content replaced whole, created_at kept."""
        check_name(name)
        check_content(subject, text, html)
        now = self.clock.now()
        owner = owner_of(tenant)
        db = self._db()

        def op(txn: Any) -> EmailTemplate:
            old = self._owned(txn, db, name, owner)
            new = msgspec.structs.replace(old, subject=subject, text=text, html=html,
                                          updated_at=max(now, old.created_at))
            txn.put(name.encode("ascii"), _enc.encode(new), db=db)
            return new
        return op

    def delete_op(self, name: str, *, tenant: str | None = None
                  ) -> Callable[[Any], EmailTemplate]:
        """DeleteEmailTemplate; returns what was removed."""
        check_name(name)
        owner = owner_of(tenant)
        db = self._db()

        def op(txn: Any) -> EmailTemplate:
            old = self._owned(txn, db, name, owner)
            txn.delete(name.encode("ascii"), db=db)
            return old
        return op

    def _owned(self, txn: Any, db: Any, name: str, owner: str | None) -> EmailTemplate:
        raw = txn.get(name.encode("ascii"), db=db)
        tpl = _dec.decode(raw) if raw is not None else None
        if tpl is None or not _visible(tpl, owner):
            raise TemplateNotFound(f"Template {name} does not exist.")
        if owner is not None and tpl.tenant != owner:
            raise TemplateStoreError(f"TemplateName: template {name} is shared and can be "
                                     "changed only by the default tenant or the operator")
        return tpl

    # -------------------------------------------------------------- reads

    def get(self, name: str, *, tenant: str | None = None) -> EmailTemplate:
        """GetEmailTemplate (TemplateNotFound when absent or not visible to `tenant`)."""
        check_name(name)
        owner = owner_of(tenant)
        db = self._db()
        raw = self.queue.read(lambda txn: txn.get(name.encode("ascii"), db=db))
        tpl = _dec.decode(raw) if raw is not None else None
        if tpl is None or not _visible(tpl, owner):
            raise TemplateNotFound(f"Template {name} does not exist.")
        return tpl

    def list(self, *, page_size: int | None = None, next_token: str | None = None,
             tenant: str | None = None) -> tuple[list[EmailTemplate], str | None]:
        """ListEmailTemplates: up to `page_size` (1-100, default 10) templates by name after
        `next_token`, and the token of the next page (None: no more)."""
        if page_size is None:
            page_size = DEFAULT_PAGE_SIZE
        if isinstance(page_size, bool) or not isinstance(page_size, int) \
                or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise TemplateStoreError(f"PageSize: expected 1-{MAX_PAGE_SIZE}, got {page_size!r}")
        after = decode_token(next_token) if next_token else None
        owner = owner_of(tenant)
        db = self._db()

        def read(txn: Any) -> list[EmailTemplate]:
            out: list[EmailTemplate] = []
            with txn.cursor(db=db) as cur:
                found = cur.set_range(after.encode("ascii")) if after else cur.first()
                while found and len(out) <= page_size:
                    if after is None or bytes(cur.key()) != after.encode("ascii"):
                        tpl = _dec.decode(cur.value())
                        if _visible(tpl, owner):
                            out.append(tpl)
                    found = cur.next()
            return out
        page = self.queue.read(read)
        if len(page) > page_size:
            return page[:page_size], encode_token(page[page_size - 1].name)
        return page, None

    def compiled(self, name: str, *, tenant: str | None = None
                 ) -> tuple[EmailTemplate, render.CompiledTemplate]:
        """A stored template and its compiled form (kept for the next send until the
        template changes)."""
        tpl = self.get(name, tenant=tenant)
        key = (tpl.name, tpl.created_at, tpl.updated_at)
        compiled = self._cache.get(key)
        if compiled is None:
            compiled = render.compile_template(tpl.subject, tpl.text, tpl.html)
            self._cache[key] = compiled
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return tpl, compiled

    def test_render(self, template_data: str, *, name: str | None = None,
                    content: tuple[str | None, str | None, str | None] | None = None,
                    tenant: str | None = None) -> render.Rendered:
        """TestRenderEmailTemplate: the stored template `name`, or `content` (subject, text,
        html), rendered with `template_data`. TemplateNotFound, render.TemplateError,
        render.TemplateDataError, render.RenderingFailure (SES answers the last with
        BadRequestException and its message)."""
        if (name is None) == (content is None):
            raise TemplateStoreError("TemplateName: give a template name or its content")
        data = render.parse_data(template_data)
        if name is not None:
            tpl, compiled = self.compiled(name, tenant=tenant)
            return render.render(compiled, data, template_name=tpl.name)
        assert content is not None
        return render.render(check_content(*content), data)


# ---------------------------------------------------------------------- a request's template

_ARN = re.compile(r"arn:[^:]+:ses:[^:]*:[^:]*:template/(.+)\Z")


class RequestTemplate(msgspec.Struct, frozen=True):
    """The template of a SendEmail `Content.Template` (or SendBulkEmail `DefaultContent
    .Template`): the name for the Rendering Failure event ("" when inline), the compiled
    parts, and the parsed TemplateData."""

    name: str
    compiled: render.CompiledTemplate
    data: dict[str, Any]


def request_template(store: TemplateStore, template: Any, *, tenant: str | None = None,
                     where: str = "Content.Template") -> RequestTemplate:
    """Resolve a request's `Template` object: TemplateName, TemplateArn (`...:template/NAME`)
    or inline TemplateContent (simple substitutions only, as SES); TemplateData absent
    means no data. Raises TemplateNotFound, TemplateStoreError, render.TemplateError and
    render.TemplateDataError, each naming the field under `where`."""
    if not isinstance(template, dict):
        raise TemplateStoreError(f"{where}: expected an object")
    name, arn, content = (template.get("TemplateName"), template.get("TemplateArn"),
                          template.get("TemplateContent"))
    if sum(x is not None for x in (name, arn, content)) != 1:
        raise TemplateStoreError(f"{where}: give exactly one of TemplateName, TemplateArn "
                                 "and TemplateContent")
    raw_data = template.get("TemplateData")
    data = render.parse_data("{}" if raw_data is None else raw_data, f"{where}.TemplateData")
    if content is not None:
        if not isinstance(content, dict):
            raise TemplateStoreError(f"{where}.TemplateContent: expected an object")
        compiled = check_content(content.get("Subject"), content.get("Text"),
                                 content.get("Html"), inline=True,
                                 prefix=f"{where}.TemplateContent.")
        return RequestTemplate("", compiled, data)
    if arn is not None:
        m = _ARN.match(arn) if isinstance(arn, str) else None
        if m is None:
            raise TemplateStoreError(f"{where}.TemplateArn: expected "
                                     f"arn:aws:ses:REGION:ACCOUNT:template/NAME, got {arn!r}")
        name = m.group(1)
    checked = check_name(name, f"{where}.TemplateName" if arn is None
                         else f"{where}.TemplateArn")
    tpl, compiled = store.compiled(checked, tenant=tenant)
    return RequestTemplate(tpl.name, compiled, data)
