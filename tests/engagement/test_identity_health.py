"""Identity resolution and health rules on hand-made records."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from engagement.health import assess_health, derive_stage
from engagement.identity import IdentityIndex, normalize_email
from engagement.mapping import IdentityMapping, Mapping, load_mapping
from engagement.model import MeetingRef, Meetings, Progress, Stakeholder
from engagement.records import Account, Contact, CrmUser, Opportunity

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
IDENTITY = IdentityMapping(
    internal_domains=["agency.example"],
    aliases={"JDoe@Client.com": "jane.doe@client.com"},
    strip_plus_tags=True,
)


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping("mappings/default.yaml")


def index() -> IdentityIndex:
    accounts = [
        Account("001A", "Client", ("client.com", "client.de"), None),
        Account("001B", "Other", ("other.io",), None),
    ]
    contacts = [
        Contact("003A", "001A", "Jane Doe", "Jane.Doe@Client.com", None, NOW),
        Contact("003B", "001B", "Sam Roe", "sam@other.io", None, NOW),
    ]
    users = [CrmUser("005A", "Pat Manager", "pat@agency.example", None, True)]
    return IdentityIndex(IDENTITY, accounts, contacts, users)


@pytest.mark.parametrize(
    ("address", "kind", "who"),
    [
        ("jane.doe@client.com", "contact", "003A"),
        ("JANE.DOE@CLIENT.COM", "contact", "003A"),
        (" jane.doe+meetings@client.com ", "contact", "003A"),
        ("jdoe@client.com", "contact", "003A"),  # alias from the mapping
        ("new.person@client.de", "client_domain", "001A"),  # second domain of the client
        ("pat@agency.example", "user", "005A"),
        ("someone@agency.example", "internal", None),
        ("x@gmail.com", "unknown", None),
    ],
)
def test_resolution(address: str, kind: str, who: str | None) -> None:
    match = index().resolve(address)
    assert match.kind == kind
    assert who in (match.contact_id, match.user_id, match.account_id)
    assert match.confidence == {
        "contact": "exact",
        "user": "exact",
        "client_domain": "domain",
        "internal": "domain",
    }.get(kind, "none")


def test_plus_tags_kept_when_the_mapping_says_so() -> None:
    keep = IdentityMapping(internal_domains=["agency.example"], strip_plus_tags=False)
    assert normalize_email("a+b@x.com", keep) == "a+b@x.com"
    assert normalize_email("A+B@X.com", IDENTITY) == "a@x.com"


def test_a_domain_shared_by_two_clients_identifies_neither() -> None:
    accounts = [Account("001A", "A", ("shared.com",), None), Account("001B", "B", ("shared.com",), None)]
    assert IdentityIndex(IDENTITY, accounts, [], []).resolve("x@shared.com").kind == "unknown"


def opportunity(stage: str = "Closed Won", close: date | None = None) -> Opportunity:
    return Opportunity("006A", "Site", "001A", stage, "005A", close, 1.0, "SITE", NOW)


def progress(
    total: int = 10, done: int = 5, overdue: int = 0, blocked: int = 0, weekly: tuple[int, ...] = (1, 1, 1, 1)
) -> Progress:
    open_ = total - done
    return Progress(
        total,
        {"new": open_, "indeterminate": 0, "done": done},
        round(100 * done / total, 1) if total else 0.0,
        overdue,
        blocked,
        0,
        weekly,
        9 if overdue else None,
    )


def meetings(last_days_ago: int | None, next_in_days: int | None) -> Meetings:
    def ref(start: datetime) -> MeetingRef:
        return MeetingRef("e", "Check-in", start, start + timedelta(hours=1), 2)

    return Meetings(
        ref(NOW - timedelta(days=last_days_ago)) if last_days_ago is not None else None,
        ref(NOW + timedelta(days=next_in_days)) if next_in_days is not None else None,
        7.0,
        4,
        1 if next_in_days is not None else 0,
    )


def sponsor(days_ago: int | None, quiet_days: int = 30) -> Stakeholder:
    last = NOW - timedelta(days=days_ago) if days_ago is not None else None
    engaged = last is not None and days_ago is not None and days_ago <= quiet_days
    return Stakeholder("jane@client.com", "Jane Doe", "003A", "Decision Maker", True, last, engaged, "exact")


def test_green_when_all_is_well(mapping: Mapping) -> None:
    health = assess_health("execution", opportunity(), progress(), meetings(3, 4), (sponsor(3),), mapping, NOW)
    assert health.level == "green" and health.reasons == ()


@pytest.mark.parametrize(
    ("last", "upcoming", "level"),
    [
        (10, None, "green"),
        (20, None, "amber"),
        (20, 30, "amber"),
        (40, None, "red"),
        (40, 5, "green"),
        (None, None, "amber"),
    ],
)
def test_checkin_cadence(mapping: Mapping, last: int | None, upcoming: int | None, level: str) -> None:
    health = assess_health(
        "execution", opportunity(), progress(), meetings(last, upcoming), (sponsor(3),), mapping, NOW
    )
    assert health.level == level
    if level != "green":
        assert health.reasons[0].code in ("checkin_overdue", "no_client_meeting")
        assert "14 days" in health.reasons[0].text


def test_quiet_key_stakeholder_and_missing_one(mapping: Mapping) -> None:
    quiet = assess_health("execution", opportunity(), progress(), meetings(3, 4), (sponsor(45),), mapping, NOW)
    assert quiet.level == "amber"
    assert quiet.reasons[0].text == "Decision Maker Jane Doe not seen in a meeting for 45 days (limit 30)."
    nobody = assess_health("execution", opportunity(), progress(), meetings(3, 4), (), mapping, NOW)
    assert nobody.reasons[0].code == "no_key_stakeholder"


def test_overdue_and_blocked_thresholds(mapping: Mapping) -> None:
    amber = assess_health(
        "execution",
        opportunity(),
        progress(total=40, done=10, overdue=2),
        meetings(3, 4),
        (sponsor(3),),
        mapping,
        NOW,
    )
    assert amber.level == "amber" and amber.reasons[0].text == "2 overdue issues, the oldest 9 days past due."
    red = assess_health(
        "execution",
        opportunity(),
        progress(total=40, done=10, overdue=6),
        meetings(3, 4),
        (sponsor(3),),
        mapping,
        NOW,
    )
    assert red.level == "red"
    share = assess_health(
        "execution",
        opportunity(),
        progress(total=10, done=6, overdue=1),
        meetings(3, 4),
        (sponsor(3),),
        mapping,
        NOW,
    )
    assert share.level == "red"  # 1 of 4 open issues overdue: over the 20 % share
    blocked = assess_health(
        "execution", opportunity(), progress(blocked=3), meetings(3, 4), (sponsor(3),), mapping, NOW
    )
    assert blocked.level == "red" and blocked.reasons[0].text == "3 blocked issues."


def test_stalled_delivery_and_info_reasons_keep_green(mapping: Mapping) -> None:
    stalled = assess_health(
        "execution", opportunity(), progress(weekly=(3, 0, 0, 0)), meetings(3, 4), (sponsor(3),), mapping, NOW
    )
    assert [r.code for r in stalled.reasons] == ["delivery_stalled"]
    unknown = Stakeholder("new@client.com", None, None, None, False, NOW, True, "domain")
    info = assess_health("execution", opportunity(), progress(), meetings(3, 4), (sponsor(3), unknown), mapping, NOW)
    assert info.level == "green" and info.reasons[0].severity == "info"


def test_delivery_rules_do_not_apply_before_the_project(mapping: Mapping) -> None:
    health = assess_health(
        "initiation",
        opportunity("Proposal/Price Quote"),
        progress(overdue=9, blocked=9),
        meetings(3, 4),
        (sponsor(3),),
        mapping,
        NOW,
    )
    assert health.level == "green"


@pytest.mark.parametrize(
    ("stage", "done", "total", "expected"),
    [
        ("Qualification", 0, 10, "initiation"),
        ("Closed Won", 0, 10, "planning"),
        ("Closed Won", 5, 10, "execution"),
        ("Closed Won", 10, 10, "closure"),
        ("Closed Lost", 3, 10, "closure"),
        ("Closed Won", 0, 0, "planning"),
    ],
)
def test_lifecycle_rules(mapping: Mapping, stage: str, done: int, total: int, expected: str) -> None:
    assert derive_stage(opportunity(stage), progress(total=total, done=done), mapping, NOW) == expected
