"""Who is looking at a page: the session, the membership behind it, what it may do."""

from __future__ import annotations

from dataclasses import dataclass

from admin.access import Permission, Principal
from admin.audit import Actor
from admin.portal_sessions import Session, csrf_token
from admin.records import Account, Member


@dataclass(frozen=True, slots=True)
class Viewer:
    session: Session
    cookie: str
    member: Member  # re-read on every request: a role change shows on the next page
    principal: Principal
    actor: Actor
    account: Account
    memberships: tuple[tuple[str, str], ...]  # (account id, account name), to switch between

    @property
    def csrf(self) -> str:
        return csrf_token(self.cookie)

    def may(self, permission: Permission | str) -> bool:
        return self.principal.may(Permission(permission))
