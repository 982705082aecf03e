"""Who may do what: roles, the permissions they hold, and the one check every route makes.

A ``Principal`` is an operator (the bootstrap token or an operator token) or
someone acting inside one billing account (an account token, or a member signed
in to the portal). ``require`` is the one place both the admin API and the
portal decide: for an account-scoped principal, an object of another account
is not found (404, exactly as if it did not exist, so ids do not leak); a
permission its role lacks is forbidden (403).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from admin.errors import Forbidden, NotFound


class Role(StrEnum):
    OPERATOR = "operator"
    OPERATOR_READONLY = "operator-readonly"
    OWNER = "owner"
    ADMIN = "admin"
    BILLING = "billing"
    VIEWER = "viewer"


OPERATOR_ROLES = (Role.OPERATOR, Role.OPERATOR_READONLY)
ACCOUNT_ROLES = (Role.OWNER, Role.ADMIN, Role.BILLING, Role.VIEWER)


class Permission(StrEnum):
    READ = "read"  # the account, money, usage, members, projects, keys (never a secret)
    AUDIT_READ = "audit:read"
    TOKENS_READ = "tokens:read"
    LIMITS_WRITE = "limits:write"  # the daily hard limit and thresholds (spend management)
    KEYS_WRITE = "keys:write"  # projects and API keys
    TOKENS_WRITE = "tokens:write"
    ACCOUNT_WRITE = "account:write"  # rename
    ACCOUNT_DELETE = "account:delete"  # request deletion, cancel the request
    MEMBERS_WRITE = "members:write"
    PROFILE_WRITE = "profile:write"  # billing profile and tax registrations
    PAYMENTS_WRITE = "payments:write"  # cards, buying credits, auto-recharge
    # Webhook endpoints and their delivery log: an integration, like API keys. The log
    # holds excerpts of the customer's own servers' answers, so viewers do not read it.
    WEBHOOKS_READ = "webhooks:read"
    WEBHOOKS_WRITE = "webhooks:write"  # endpoints, secrets, retries, test events
    # The invoice email and every member's email opt-ins (one's own: see require_member).
    NOTIFICATIONS_WRITE = "notifications:write"
    OPERATOR_READ = "operator:read"  # every account: list, the global audit log
    OPERATOR_WRITE = "operator:write"  # create, suspend, close, grant credits, verify...


_READS = frozenset({Permission.READ})
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.OPERATOR: frozenset(Permission),
    Role.OPERATOR_READONLY: frozenset(
        {
            Permission.READ,
            Permission.AUDIT_READ,
            Permission.TOKENS_READ,
            Permission.WEBHOOKS_READ,
            Permission.OPERATOR_READ,
        }
    ),
    Role.OWNER: frozenset(Permission) - {Permission.OPERATOR_READ, Permission.OPERATOR_WRITE},
    Role.ADMIN: _READS
    | {
        Permission.AUDIT_READ,
        Permission.TOKENS_READ,
        Permission.TOKENS_WRITE,
        Permission.LIMITS_WRITE,
        Permission.KEYS_WRITE,
        Permission.ACCOUNT_WRITE,
        Permission.WEBHOOKS_READ,
        Permission.WEBHOOKS_WRITE,
        Permission.NOTIFICATIONS_WRITE,
    },
    Role.BILLING: _READS
    | {Permission.PROFILE_WRITE, Permission.PAYMENTS_WRITE, Permission.NOTIFICATIONS_WRITE},
    Role.VIEWER: _READS,
}


class ActorType(StrEnum):
    OPERATOR = "operator"  # the bootstrap token
    OPERATOR_TOKEN = "operator_token"
    ACCOUNT_TOKEN = "account_token"
    MEMBER = "member"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class Principal:
    actor_type: ActorType
    actor_id: str  # "bootstrap", a token id or a member id
    name: str
    role: Role
    account_id: str | None = None  # None: an operator, over every account

    @property
    def is_operator(self) -> bool:
        return self.account_id is None

    @property
    def permissions(self) -> frozenset[Permission]:
        return ROLE_PERMISSIONS[self.role]

    def may(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]


BOOTSTRAP = Principal(ActorType.OPERATOR, "bootstrap", "bootstrap", Role.OPERATOR)
SYSTEM = Principal(ActorType.SYSTEM, "system", "system", Role.OPERATOR)


def require(principal: Principal, permission: Permission) -> None:
    """A route over every account (or none): account-scoped principals are refused."""
    if not principal.is_operator:
        raise Forbidden(f"this needs an operator token ({permission})")
    _holds(principal, permission)


def require_held(principal: Principal, permission: Permission) -> None:
    """A route every principal may call when its role holds ``permission`` (the plans
    on offer): nothing of one account is in it."""
    _holds(principal, permission)


def require_on(
    principal: Principal, permission: Permission, owner: str | None, not_found: str
) -> None:
    """An object of account ``owner`` (None: there is no such object).

    Missing and another account's look the same: ``NotFound(not_found)``.
    """
    if owner is None or (not principal.is_operator and owner != principal.account_id):
        raise NotFound(not_found)
    _holds(principal, permission)


def require_member(
    principal: Principal, permission: Permission, owner: str | None, member_id: str, not_found: str
) -> None:
    """What belongs to one member of account ``owner`` (their email opt-ins): the member
    themself may, signed in to the portal, whatever their role; others need ``permission``."""
    if owner is None or (not principal.is_operator and owner != principal.account_id):
        raise NotFound(not_found)
    if principal.actor_type == ActorType.MEMBER and principal.actor_id == member_id:
        return
    _holds(principal, permission)


def _holds(principal: Principal, permission: Permission) -> None:
    if not principal.may(permission):
        raise Forbidden(f"the {principal.role} role may not do this ({permission})")


def assignable(principal: Principal, role: Role) -> bool:
    """Whether ``principal`` may hand out ``role``: never more than it holds itself."""
    return ROLE_PERMISSIONS[role] <= principal.permissions
