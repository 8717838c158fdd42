"""The SES v2 template operations: Create/Get/Update/Delete/ListEmailTemplates and
TestRenderEmailTemplate, on the template store in the spool (relay/sesapi/templates.py),
as the caller's tenant (a tenant sees its own templates and the shared ones).

Errors as SES answers them: a missing template NotFoundException, a taken name
AlreadyExistsException, the store full LimitExceededException, anything else the store,
the parser or the renderer refuses BadRequestException naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from relay.queue.store import QueueStore
from relay.sesapi import mime, render
from relay.sesapi.errors import ApiError, bad_request, not_found
from relay.sesapi.templates import (
    TemplateExists,
    TemplateLimit,
    TemplateNotFound,
    TemplateStore,
    TemplateStoreError,
)


@contextmanager
def template_errors() -> Iterator[None]:
    """The store's and the renderer's refusals as SES v2 errors."""
    try:
        yield
    except TemplateNotFound as e:
        raise not_found(str(e)) from None
    except TemplateExists as e:
        raise ApiError(400, "AlreadyExistsException", str(e)) from None
    except TemplateLimit as e:
        raise ApiError(400, "LimitExceededException", str(e)) from None
    except (TemplateStoreError, render.TemplateError, render.TemplateDataError,
            render.RenderingFailure, mime.MessageError) as e:
        raise bad_request(str(e)) from None


def _content(request: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    content = request.get("TemplateContent")
    if not isinstance(content, dict):
        raise bad_request("TemplateContent is required (an object with Subject, Text, Html)")
    parts = []
    for key in ("Subject", "Text", "Html"):
        value = content.get(key)
        if value is not None and not isinstance(value, str):
            raise bad_request(f"TemplateContent.{key}: expected a string")
        parts.append(value)
    return parts[0], parts[1], parts[2]


class TemplateApi:
    def __init__(self, templates: TemplateStore, store: QueueStore,
                 tenant_of: Callable[[str], str]) -> None:
        """`tenant_of(credential)`: the tenant a key's credential acts as."""
        self.templates = templates
        self.store = store
        self.tenant_of = tenant_of

    async def create(self, user: str, request: Mapping[str, Any]) -> dict[str, Any]:
        name = request.get("TemplateName")
        with template_errors():
            await self.store.write(self.templates.create_op(
                name if isinstance(name, str) else "", *_content(request),
                tenant=self.tenant_of(user)))
        return {}

    def get(self, user: str, name: str) -> dict[str, Any]:
        with template_errors():
            tpl = self.templates.get(name, tenant=self.tenant_of(user))
        content = {k: v for k, v in (("Subject", tpl.subject), ("Text", tpl.text),
                                     ("Html", tpl.html)) if v is not None}
        return {"TemplateName": tpl.name, "TemplateContent": content, "Tags": []}

    async def update(self, user: str, name: str, request: Mapping[str, Any]
                     ) -> dict[str, Any]:
        with template_errors():
            await self.store.write(self.templates.update_op(
                name, *_content(request), tenant=self.tenant_of(user)))
        return {}

    async def delete(self, user: str, name: str) -> dict[str, Any]:
        with template_errors():
            await self.store.write(self.templates.delete_op(name,
                                                            tenant=self.tenant_of(user)))
        return {}

    def list(self, user: str, query: Mapping[str, list[str]]) -> dict[str, Any]:
        size_text = (query.get("PageSize") or [""])[0]
        token = (query.get("NextToken") or [""])[0] or None
        if size_text and not size_text.isdigit():
            raise bad_request(f"PageSize: expected a number, got {size_text!r}")
        with template_errors():
            page, following = self.templates.list(
                page_size=int(size_text) if size_text else None, next_token=token,
                tenant=self.tenant_of(user))
        out: dict[str, Any] = {"TemplatesMetadata": [
            {"TemplateName": t.name, "CreatedTimestamp": t.created_at} for t in page]}
        if following is not None:
            out["NextToken"] = following
        return out

    def test_render(self, user: str, name: str, request: Mapping[str, Any]
                    ) -> dict[str, Any]:
        data = request.get("TemplateData")
        if not isinstance(data, str):
            raise bad_request("TemplateData is required (a JSON object as a string)")
        with template_errors():
            rendered = self.templates.test_render(data, name=name,
                                                  tenant=self.tenant_of(user))
            text = mime.preview_message(rendered.subject, rendered.text, rendered.html)
        return {"RenderedTemplate": text}
