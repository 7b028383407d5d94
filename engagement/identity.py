"""Identity resolution: which CRM contact or user an email address belongs to.

Addresses are compared after normalization: case-folded, trimmed, the plus tag dropped
(``jane+meetings@client.com`` is ``jane@client.com``) and aliases from the mapping applied. An
address that matches no contact but whose domain belongs to exactly one client is a lower
confidence match to that client: an unknown stakeholder to review, never dropped.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from engagement.mapping import IdentityMapping
from engagement.records import Account, Contact, CrmUser

RESOLVED_LIMIT = 20_000  # memoized resolutions held at once

MatchKind = Literal["contact", "user", "client_domain", "internal", "unknown"]


def normalize_email(email: str, identity: IdentityMapping, aliases: dict[str, str] | None = None) -> str:
    """The comparable form of an address; ``aliases`` must already be normalized (see ``IdentityIndex``)."""
    address = email.strip().strip("<>").casefold()
    if "@" not in address:
        return address
    local, _, domain = address.rpartition("@")
    if identity.strip_plus_tags and "+" in local:
        local = local.split("+", 1)[0]
    address = f"{local}@{domain}"
    if aliases:
        address = aliases.get(address, address)
    return address


def email_domain(address: str) -> str:
    return address.rpartition("@")[2]


@dataclass(frozen=True)
class IdentityMatch:
    kind: MatchKind
    email: str  # normalized
    contact_id: str | None = None
    user_id: str | None = None
    account_id: str | None = None
    confidence: Literal["exact", "domain", "none"] = "none"


class IdentityIndex:
    """Lookups from normalized addresses to contacts, users and client domains."""

    def __init__(
        self,
        identity: IdentityMapping,
        accounts: Iterable[Account],
        contacts: Iterable[Contact],
        users: Iterable[CrmUser],
    ) -> None:
        self.identity = identity
        self._aliases: dict[str, str] = {}
        for alias, target in identity.aliases.items():
            self._aliases[normalize_email(alias, identity)] = normalize_email(target, identity)
        # Shared with the indexes ``with_contacts`` derives (same identity settings and aliases).
        self._normalized: dict[str, str] = {}
        self._by_target: dict[str, list[str]] = {}
        for alias, target in self._aliases.items():
            self._by_target.setdefault(target, []).append(alias)
        self._internal = {d.lower() for d in identity.internal_domains}
        self._contacts = self._by_address(contacts)
        self._users: dict[str, CrmUser] = {}
        for user in sorted(users, key=lambda u: u.id):
            if user.email:
                self._users.setdefault(self.normalize(user.email), user)
        owners: dict[str, set[str]] = {}
        for account in accounts:
            for domain in account.domains:
                owners.setdefault(domain, set()).add(account.id)
        # A domain claimed by several clients (a shared provider) identifies none of them.
        self._domains = {d: next(iter(ids)) for d, ids in owners.items() if len(ids) == 1}
        self._resolved: dict[str, IdentityMatch] = {}

    def _by_address(self, contacts: Iterable[Contact]) -> dict[str, Contact]:
        by_address: dict[str, Contact] = {}
        for contact in sorted(contacts, key=lambda c: c.id):
            if contact.email:
                # Several contacts share one address: the first id wins.
                by_address.setdefault(self.normalize(contact.email), contact)
        return by_address

    def with_contacts(self, contacts: Iterable[Contact]) -> IdentityIndex:
        """This index (users, domains, aliases) over other contacts: a group's share of the org. It
        resolves an address exactly as the whole org's index would when ``contacts`` holds every
        contact whose address normalizes to it (see ``engagement.partition.contact_keys``)."""
        index = copy.copy(self)
        index._contacts = self._by_address(contacts)
        index._resolved = {}
        return index

    def preimages(self, address: str) -> set[str]:
        """Every address (plus tag dropped, no alias applied) that may normalize to ``address``: itself
        and the aliases of it (a superset: the index decides exactly)."""
        return {address, *self._by_target.get(address, ())}

    @property
    def aliases(self) -> dict[str, str]:
        """Normalized alias -> normalized address."""
        return self._aliases

    @property
    def domains(self) -> dict[str, str]:
        """Client domain -> the one account that claims it."""
        return self._domains

    def normalize(self, email: str) -> str:
        """``normalize_email`` with this index's settings and aliases, memoized (bounded like
        ``resolve``): the same addresses attend meeting after meeting (large org: 2 million calls)."""
        address = self._normalized.get(email)
        if address is None:
            if len(self._normalized) >= RESOLVED_LIMIT:
                self._normalized.clear()
            address = self._normalized[email] = normalize_email(email, self.identity, self._aliases)
        return address

    def resolve(self, email: str) -> IdentityMatch:
        """Who ``email`` is (memoized: the same addresses attend meeting after meeting)."""
        match = self._resolved.get(email)
        if match is None:
            if len(self._resolved) >= RESOLVED_LIMIT:
                self._resolved.clear()  # bounded: a large org's addresses would otherwise all stay
            match = self._resolved[email] = self._resolve(email)
        return match

    def _resolve(self, email: str) -> IdentityMatch:
        address = self.normalize(email)
        contact = self._contacts.get(address)
        if contact is not None:
            return IdentityMatch(
                "contact", address, contact_id=contact.id, account_id=contact.account_id, confidence="exact"
            )
        user = self._users.get(address)
        domain = email_domain(address)
        if user is not None:
            return IdentityMatch("user", address, user_id=user.id, confidence="exact")
        if domain in self._internal:
            return IdentityMatch("internal", address, confidence="domain")
        account_id = self._domains.get(domain)
        if account_id is not None:
            return IdentityMatch("client_domain", address, account_id=account_id, confidence="domain")
        return IdentityMatch("unknown", address)

    def contact_for(self, email: str | None) -> Contact | None:
        return self._contacts.get(self.normalize(email)) if email else None
