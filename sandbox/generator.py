"""A deterministic, seeded generator of agency orgs: clients, stakeholders, projects, meetings.

The same (size, seed, anchor) always gives the same ``World``. Timestamps are laid out relative to
``anchor`` (by default the current minute), so a sandbox started today has meetings last week and
next week, and every record was last modified before the first sync can start.

The org is shaped like the engagements Accord is for: a client Account with stakeholders (Contacts
with roles on Opportunities), one Jira project per engagement with epics and issues in realistic
states (done, in progress, overdue, blocked, unassigned), and project managers' calendars with
recurring check-ins, one-off client meetings, internal-only meetings, declined invitations and
cancellations. A few records carry hostile values (quotes, operators, markup, very long and
non-ASCII text, mixed-case and plus-addressed emails) so every test meets them.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from sandbox.world import (
    Attendee,
    Client,
    Contact,
    Engagement,
    Issue,
    IssueStatus,
    Meeting,
    ResponseStatus,
    StakeholderRole,
    User,
    World,
)


@dataclass(frozen=True)
class OrgSize:
    clients: int
    contacts_per_client: int
    users: int
    issues: int
    meetings: int


SIZES: dict[str, OrgSize] = {
    "small": OrgSize(clients=8, contacts_per_client=8, users=10, issues=400, meetings=240),
    "medium": OrgSize(clients=500, contacts_per_client=10, users=60, issues=50_000, meetings=20_000),
    "large": OrgSize(clients=5_000, contacts_per_client=10, users=600, issues=500_000, meetings=200_000),
}

INTERNAL_DOMAIN = "agency.example"

FIRST_NAMES = [
    "Ada",
    "Alan",
    "Amara",
    "Anna",
    "Ben",
    "Carla",
    "Chen",
    "Dana",
    "Diego",
    "Elena",
    "Emil",
    "Farah",
    "Femi",
    "Grace",
    "Hana",
    "Ibrahim",
    "Ines",
    "Jack",
    "Jana",
    "Jonas",
    "Kai",
    "Kenji",
    "Lara",
    "Leon",
    "Lina",
    "Lukas",
    "Maria",
    "Mateo",
    "Mei",
    "Mira",
    "Nadia",
    "Noah",
    "Olga",
    "Omar",
    "Pia",
    "Priya",
    "Rafael",
    "Rosa",
    "Sam",
    "Sara",
    "Sofia",
    "Tariq",
    "Theo",
    "Uma",
    "Vera",
    "Wen",
    "Yara",
    "Yusuf",
    "Zoe",
]
FIRST_NAMES_INTL = ["Zoë", "José", "Łukasz", "Søren", "Ünal", "Chloé", "Björn", "Анна", "美咲", "Đorđe"]
LAST_NAMES = [
    "Abbott",
    "Baker",
    "Becker",
    "Brown",
    "Castro",
    "Chen",
    "Costa",
    "Dubois",
    "Evans",
    "Fischer",
    "Garcia",
    "Haddad",
    "Hansen",
    "Ito",
    "Jensen",
    "Kaur",
    "Khan",
    "Kim",
    "Kowalski",
    "Larsen",
    "Lopez",
    "Martin",
    "Meyer",
    "Moreau",
    "Nakamura",
    "Nguyen",
    "Novak",
    "Okafor",
    "Olsen",
    "Patel",
    "Perez",
    "Quinn",
    "Rossi",
    "Santos",
    "Schmidt",
    "Silva",
    "Singh",
    "Smith",
    "Tanaka",
    "Taylor",
    "Varga",
    "Wagner",
    "Walker",
    "Weber",
    "Wong",
    "Yilmaz",
    "Young",
    "Zhang",
]
LAST_NAMES_INTL = ["Müller", "Ångström", "Sørensen", "Dvořák", "O'Brien", "Nuñez", "Çelik", "Иванова", "山田"]
CLIENT_WORDS_A = [
    "Northwind",
    "Bluefin",
    "Cedar",
    "Summit",
    "Harbor",
    "Aurora",
    "Granite",
    "Meridian",
    "Copper",
    "Evergreen",
    "Falcon",
    "Lumen",
    "Orbit",
    "Pioneer",
    "Quartz",
    "Redwood",
    "Sterling",
    "Tidal",
    "Vertex",
    "Willow",
    "Zenith",
    "Atlas",
    "Beacon",
    "Crescent",
]
CLIENT_WORDS_B = [
    "Logistics",
    "Health",
    "Foods",
    "Energy",
    "Media",
    "Robotics",
    "Capital",
    "Retail",
    "Labs",
    "Systems",
    "Mobility",
    "Insurance",
    "Travel",
    "Analytics",
    "Foundry",
    "Pharma",
    "Telecom",
    "Studios",
    "Brewing",
    "Materials",
]
CLIENT_SUFFIXES = ["Ltd", "GmbH", "Inc.", "S.A.", "AG", "LLC", "plc", "B.V.", "Group", "& Co."]
INDUSTRIES = ["Retail", "Healthcare", "Energy", "Media", "Manufacturing", "Finance", "Travel", "Technology"]
TLDS = ["com", "io", "de", "co.uk", "fr", "nl", "example"]
CONTACT_TITLES = [
    "Chief Executive Officer",
    "Chief Technology Officer",
    "VP Marketing",
    "Head of Digital",
    "Product Owner",
    "IT Manager",
    "Procurement Lead",
    "Program Director",
    "Finance Director",
    "Operations Manager",
]
STAFF_TITLES = ["Engineer", "Designer", "Analyst", "QA Engineer", "Consultant", "Developer"]
TIMEZONES = ["Europe/Berlin", "Europe/London", "America/New_York", "America/Los_Angeles", "Asia/Singapore"]
ROLES = [
    "Decision Maker",
    "Economic Buyer",
    "Executive Sponsor",
    "Technical Buyer",
    "Business User",
    "Evaluator",
    "Influencer",
]
PRE_SALE_STAGES = ["Qualification", "Needs Analysis", "Proposal/Price Quote", "Negotiation/Review"]
PROJECT_NOUNS = [
    "Website Relaunch",
    "Data Platform",
    "Mobile App",
    "CRM Migration",
    "Brand Refresh",
    "Analytics Rollout",
    "E-commerce Replatform",
    "Customer Portal",
    "Cloud Migration",
    "Loyalty Program",
]
ISSUE_VERBS = ["Implement", "Design", "Fix", "Review", "Migrate", "Document", "Test", "Integrate", "Refine"]
ISSUE_OBJECTS = [
    "checkout flow",
    "login page",
    "product feed",
    "search results",
    "payment provider",
    "data model",
    "reporting dashboard",
    "email templates",
    "API gateway",
    "content model",
    "SSO",
    "performance budget",
]
EPIC_THEMES = ["Discovery", "Foundations", "Core features", "Integrations", "Launch readiness", "Hypercare"]
ONE_OFF_MEETINGS = [
    "Kickoff",
    "Steering committee",
    "Sprint demo",
    "Design review",
    "Requirements workshop",
    "Retrospective",
    "Budget review",
    "Go-live readiness",
]
INTERNAL_MEETINGS = ["Team standup", "Resourcing", "Delivery review", "1:1", "Guild meeting"]

# Values aimed at SOQL, JQL, templates and renderers; they must arrive intact and inject nothing.
HOSTILE_CLIENT_NAMES = [
    'O\'Reilly & Sons "Quoted" Ltd',
    "Robert'); DELETE FROM Account WHERE Name LIKE '% OR 1=1 --",
    "<script>alert('x')</script> Media {{ 7*7 }} AG",
    "Ünïcödé Ωmega 北京咨询 Ltd " + "long " * 40,
    'Back\\slash "AND project = X" OR summary ~ "*" ORDER BY',
]

PRIORITIES: tuple[Literal["Highest", "High", "Medium", "Low"], ...] = ("Highest", "High", "Medium", "Low")


def _ascii_slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "", folded.lower())


class _Generator:
    def __init__(self, size: str, seed: int, anchor: datetime) -> None:
        if size not in SIZES:
            raise ValueError(f"unknown org size {size!r}; expected one of {sorted(SIZES)}")
        self.size_name = size
        self.size = SIZES[size]
        self.seed = seed
        self.rng = random.Random(f"accord-sandbox:{size}:{seed}")
        self.anchor = anchor
        self.users: list[User] = []
        self.pms: list[User] = []
        self.staff: list[User] = []
        self.clients: list[Client] = []
        self.contacts: list[Contact] = []
        self.contacts_by_client: dict[str, list[Contact]] = {}
        self.engagements: list[Engagement] = []
        self.roles: list[StakeholderRole] = []
        self.issues: list[Issue] = []
        self.meetings: list[Meeting] = []
        self._used_emails: set[str] = set()
        self._used_project_keys: set[str] = set()
        self._neglected: set[str] = set()

    # -- time helpers ----------------------------------------------------------------------------
    def _past(self, min_days: float, max_days: float) -> datetime:
        """A millisecond timestamp between max_days and min_days before the anchor."""
        seconds = self.rng.uniform(min_days * 86400, max_days * 86400)
        moment = self.anchor - timedelta(seconds=seconds)
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)

    def _between(self, start: datetime, end: datetime) -> datetime:
        if end <= start:
            return start
        moment = start + (end - start) * self.rng.random()
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)

    # -- people --------------------------------------------------------------------------------------
    def _unique_email(self, local: str, domain: str) -> str:
        candidate = f"{local}@{domain}"
        n = 2
        while candidate.lower() in self._used_emails:
            candidate = f"{local}{n}@{domain}"
            n += 1
        self._used_emails.add(candidate.lower())
        return candidate

    def make_users(self) -> None:
        rng = self.rng
        heads = max(1, self.size.users // 10)
        pm_count = max(2, int(self.size.users * 0.6))
        for i in range(self.size.users):
            first = rng.choice(FIRST_NAMES)
            last = rng.choice(LAST_NAMES)
            is_head = i < heads
            is_pm = not is_head and i < heads + pm_count
            title = "Head of Delivery" if is_head else ("Project Manager" if is_pm else rng.choice(STAFF_TITLES))
            email = self._unique_email(f"{_ascii_slug(first)}.{_ascii_slug(last)}", INTERNAL_DOMAIN)
            user = User(
                key=f"user-{i + 1:04d}",
                first_name=first,
                last_name=last,
                email=email,
                title=title,
                manager_key=None if is_head else f"user-{rng.randrange(heads) + 1:04d}",
                timezone=rng.choice(TIMEZONES),
                is_project_manager=is_pm or is_head,
                created=self._past(400, 900),
                jira_account_id=f"{rng.getrandbits(96):024x}",
            )
            self.users.append(user)
            (self.pms if user.is_project_manager else self.staff).append(user)
        if not self.staff:
            self.staff = list(self.pms)

    def make_clients(self) -> None:
        rng = self.rng
        used_names: set[str] = set()
        for i in range(self.size.clients):
            if i < len(HOSTILE_CLIENT_NAMES) and self.size_name != "large":
                name = HOSTILE_CLIENT_NAMES[i][:255]
                slug = f"hostile{i + 1}"
            else:
                while True:
                    base = f"{rng.choice(CLIENT_WORDS_A)} {rng.choice(CLIENT_WORDS_B)}"
                    name = f"{base} {rng.choice(CLIENT_SUFFIXES)}"
                    if name not in used_names:
                        break
                    name = f"{base} {i + 1}"
                    if name not in used_names:
                        break
                slug = f"{_ascii_slug(base)}{i + 1}"
            used_names.add(name)
            tld = rng.choice(TLDS)
            domains = [f"{slug}.{tld}"]
            if rng.random() < 0.2:  # a second brand or country domain
                domains.append(f"{slug}-group.com")
            created = self._past(200, 800)
            client = Client(
                key=f"client-{i + 1:05d}",
                name=name,
                domains=domains,
                industry=rng.choice(INDUSTRIES),
                owner_key=rng.choice(self.pms).key,
                website=f"https://www.{domains[0]}",
                created=created,
                modified=self._between(created, self.anchor - timedelta(minutes=5)),
            )
            self.clients.append(client)
            self.make_contacts(client)

    def make_contacts(self, client: Client) -> None:
        rng = self.rng
        contacts: list[Contact] = []
        count = max(2, self.size.contacts_per_client + rng.randint(-2, 2))
        for j in range(count):
            intl = rng.random() < 0.12
            first = rng.choice(FIRST_NAMES_INTL if intl else FIRST_NAMES)
            last = rng.choice(LAST_NAMES_INTL if intl and rng.random() < 0.5 else LAST_NAMES)
            local = f"{_ascii_slug(first) or 'contact'}.{_ascii_slug(last) or 'person'}"
            domain = client.domains[1] if len(client.domains) > 1 and rng.random() < 0.3 else client.domains[0]
            email = self._unique_email(local, domain)
            if rng.random() < 0.15:  # the CRM holds it in mixed case; invitations use lower case
                local_part, domain_part = email.split("@")
                email = f"{local_part.title()}@{domain_part.capitalize()}"
            created = self._between(client.created, self.anchor - timedelta(days=1))
            contacts.append(
                Contact(
                    key=f"contact-{len(self.contacts) + len(contacts) + 1:06d}",
                    client_key=client.key,
                    first_name=first,
                    last_name=last,
                    email=email,
                    title=rng.choice(CONTACT_TITLES) if j else "Chief Executive Officer",
                    phone=f"+{rng.randint(1, 49)} {rng.randint(100, 999)} {rng.randint(1000000, 9999999)}",
                    created=created,
                    modified=self._between(created, self.anchor - timedelta(minutes=5)),
                )
            )
        self.contacts.extend(contacts)
        self.contacts_by_client[client.key] = contacts

    # -- engagements and work --------------------------------------------------------------------
    def _project_key(self, client: Client) -> str:
        letters = re.sub(r"[^A-Z]", "", _ascii_slug(client.name).upper())[:4] or "PRJ"
        if not letters[0].isalpha():
            letters = "P" + letters
        key = letters
        n = 2
        while key in self._used_project_keys:
            key = f"{letters[:4]}{n}"
            n += 1
        self._used_project_keys.add(key)
        return key

    def make_engagements(self) -> None:
        rng = self.rng
        for client in self.clients:
            count = 2 if rng.random() < 0.35 else 1
            for _ in range(count):
                roll = rng.random()
                if roll < 0.12:
                    stage = rng.choice(PRE_SALE_STAGES)
                elif roll < 0.20:
                    stage = "Closed Lost"
                else:
                    stage = "Closed Won"
                # Most engagements started in the last year; a few are older and done.
                earliest = max(client.created, self.anchor - timedelta(days=rng.choice((120, 240, 360, 420))))
                created = self._between(earliest, self.anchor - timedelta(days=20))
                project = rng.choice(PROJECT_NOUNS)
                if stage == "Closed Won":
                    close = (created + timedelta(days=rng.randint(10, 60))).date()
                else:
                    close = (self.anchor + timedelta(days=rng.randint(-30, 90))).date()
                engagement = Engagement(
                    key=f"eng-{len(self.engagements) + 1:05d}",
                    client_key=client.key,
                    name=f"{client.name[:80]} - {project}",
                    stage=stage,
                    amount=float(rng.randrange(20, 900) * 1000),
                    close_date=close,
                    owner_key=client.owner_key if rng.random() < 0.7 else rng.choice(self.pms).key,
                    jira_project_key=self._project_key(client),
                    jira_project_name=f"{client.name[:60]} {project}",
                    created=created,
                    modified=self._between(created, self.anchor - timedelta(minutes=5)),
                )
                self.engagements.append(engagement)
                self.make_roles(engagement)

    def make_roles(self, engagement: Engagement) -> None:
        rng = self.rng
        contacts = self.contacts_by_client[engagement.client_key]
        chosen = rng.sample(contacts, k=min(len(contacts), rng.randint(2, 5)))
        for i, contact in enumerate(chosen):
            created = self._between(engagement.created, self.anchor - timedelta(minutes=10))
            self.roles.append(
                StakeholderRole(
                    key=f"role-{len(self.roles) + 1:06d}",
                    engagement_key=engagement.key,
                    contact_key=contact.key,
                    role=ROLES[0] if i == 0 else rng.choice(ROLES),
                    is_primary=i == 0,
                    created=created,
                    modified=self._between(created, self.anchor - timedelta(minutes=5)),
                )
            )

    def _project_progress(self, engagement: Engagement) -> float:
        """Share of the project's work that is done, by where the engagement stands."""
        if engagement.stage in PRE_SALE_STAGES:
            return 0.02
        if engagement.stage == "Closed Lost":
            return 0.3
        age_days = (self.anchor - engagement.created).days
        if age_days > 330:
            return 1.0  # delivered
        return min(0.97, max(0.03, age_days / 360 + self.rng.uniform(-0.1, 0.1)))

    def make_issues(self) -> None:
        rng = self.rng
        weights = [rng.uniform(0.4, 1.6) for _ in self.engagements]
        total = sum(weights)
        for engagement, weight in zip(self.engagements, weights, strict=True):
            count = max(3, round(self.size.issues * weight / total))
            self.make_project_issues(engagement, count)

    def make_project_issues(self, engagement: Engagement, count: int) -> None:
        rng = self.rng
        progress = self._project_progress(engagement)
        team = rng.sample(self.staff, k=min(len(self.staff), rng.randint(2, 6)))
        project = engagement.jira_project_key
        epic_count = min(len(EPIC_THEMES), max(1, count // 15))
        epics: list[Issue] = []
        start = engagement.created
        for n in range(1, count + 1):
            is_epic = n <= epic_count
            created = self._between(start, self.anchor - timedelta(hours=2))
            roll = rng.random()
            status: IssueStatus
            if roll < progress:
                status = "Done"
            elif roll < progress + (1 - progress) * 0.35:
                in_flight = rng.random()
                status = "In Progress" if in_flight < 0.65 else "In Review" if in_flight < 0.93 else "Blocked"
            else:
                status = "To Do"
            updated = self._between(created, self.anchor - timedelta(minutes=2))
            resolved = updated if status == "Done" else None
            due: date | None = None
            if not is_epic and rng.random() < 0.6:
                if status == "Done":
                    due = (created + timedelta(days=rng.randint(5, 90))).date()
                else:  # open work is mostly due ahead; some of it slipped
                    due = (self.anchor + timedelta(days=rng.randint(-12, 80))).date()
            labels = ["blocked"] if status == "Blocked" and rng.random() < 0.5 else []
            if rng.random() < 0.2:
                labels.append(rng.choice(["client-facing", "tech-debt", "quick-win", "security"]))
            issue = Issue(
                key=f"{project}-{n}",
                project_key=project,
                summary=(
                    f"{EPIC_THEMES[(n - 1) % len(EPIC_THEMES)]}"
                    if is_epic
                    else f"{rng.choice(ISSUE_VERBS)} {rng.choice(ISSUE_OBJECTS)}"
                ),
                issue_type="Epic" if is_epic else rng.choice(("Story", "Story", "Task", "Bug")),
                status=status,
                epic_key=None if is_epic or not epics or rng.random() < 0.15 else rng.choice(epics).key,
                assignee_key=None if rng.random() < 0.1 else rng.choice(team).key,
                reporter_key=engagement.owner_key,
                labels=labels,
                priority=rng.choice(PRIORITIES),
                due_date=due,
                created=created,
                updated=updated,
                resolution_date=resolved,
            )
            if is_epic:
                epics.append(issue)
            self.issues.append(issue)

    # -- calendars -----------------------------------------------------------------------------
    def _attendee_email(self, contact: Contact) -> str:
        """How an invitation spells the contact's address: usually plain, sometimes not as in the CRM."""
        email = contact.email.lower()
        roll = self.rng.random()
        if roll < 0.05:
            local, domain = email.split("@")
            return f"{local}+meetings@{domain}"
        if roll < 0.08:
            return email.upper()
        return email

    def _slot(self, day: datetime, tz_hour: int) -> datetime:
        return day.replace(hour=tz_hour, minute=self.rng.choice((0, 30)), second=0, microsecond=0)

    def make_meetings(self) -> None:
        rng = self.rng
        users_by_key = {u.key: u for u in self.users}
        contacts_by_key = {c.key: c for c in self.contacts}
        roles_by_engagement: dict[str, list[StakeholderRole]] = {}
        for role in self.roles:
            roles_by_engagement.setdefault(role.engagement_key, []).append(role)
        active = [e for e in self.engagements if e.stage == "Closed Won"]
        others = [e for e in self.engagements if e.stage != "Closed Won"]
        target = self.size.meetings
        internal_target = int(target * 0.15)
        client_target = target - internal_target
        # About one active engagement in six has lapsed: no check-in lately and none planned.
        self._neglected = {e.key for e in active if rng.random() < 0.16}
        with_series = [e for e in active if e.key not in self._neglected and rng.random() < 0.8]
        recurring = with_series[: max(1, client_target // 8)]
        for engagement in recurring:
            self.meetings.append(
                self._recurring_checkin(engagement, users_by_key, contacts_by_key, roles_by_engagement)
            )
        pool = active + others
        while len(self.meetings) < client_target and pool:
            engagement = rng.choice(pool)
            self.meetings.append(self._one_off(engagement, users_by_key, contacts_by_key, roles_by_engagement))
        while len(self.meetings) < target:
            self.meetings.append(self._internal(users_by_key))

    def _people(
        self,
        engagement: Engagement,
        contacts_by_key: dict[str, Contact],
        roles_by_engagement: dict[str, list[StakeholderRole]],
    ) -> list[Contact]:
        rng = self.rng
        stakeholders = [contacts_by_key[r.contact_key] for r in roles_by_engagement.get(engagement.key, [])]
        others = self.contacts_by_client[engagement.client_key]
        chosen = rng.sample(stakeholders, k=min(len(stakeholders), rng.randint(1, 3)))
        if rng.random() < 0.25:
            chosen.append(rng.choice(others))  # a client person without a role on this engagement
        return list({c.key: c for c in chosen}.values())

    def _client_attendees(self, engagement: Engagement, people: list[Contact], declined_share: float) -> list[Attendee]:
        rng = self.rng
        attendees = []
        for contact in people:
            response: ResponseStatus = (
                "declined"
                if rng.random() < declined_share
                else rng.choice(("accepted", "accepted", "tentative", "needsAction"))
            )
            attendees.append(
                Attendee(
                    email=self._attendee_email(contact),
                    display_name=f"{contact.first_name} {contact.last_name}",
                    response=response,
                )
            )
        if rng.random() < 0.06:  # someone from the client who is not in the CRM at all
            client = next(c for c in self.clients if c.key == engagement.client_key)
            attendees.append(
                Attendee(
                    email=f"new.stakeholder{rng.randrange(4)}@{client.domains[0]}",
                    display_name=None,
                    response="needsAction",
                )
            )
        return attendees

    def _organizer(self, owner: User) -> Attendee:
        return Attendee(
            email=owner.email,
            display_name=f"{owner.first_name} {owner.last_name}",
            response="accepted",
            organizer=True,
        )

    def _recurring_checkin(
        self,
        engagement: Engagement,
        users_by_key: dict[str, User],
        contacts_by_key: dict[str, Contact],
        roles_by_engagement: dict[str, list[StakeholderRole]],
    ) -> Meeting:
        rng = self.rng
        owner = users_by_key[engagement.owner_key]
        first_day = max(engagement.created, self.anchor - timedelta(days=rng.randint(30, 120)))
        start = self._slot(first_day, rng.randint(8, 15))
        interval = rng.choice((1, 1, 2))
        occurrences = rng.randint(8, 30)
        rule = f"RRULE:FREQ=WEEKLY;INTERVAL={interval};COUNT={occurrences}"
        instance_starts = [start + timedelta(weeks=interval * k) for k in range(occurrences)]
        cancelled = rng.sample(instance_starts[1:], k=min(len(instance_starts) - 1, rng.randint(0, 2)))
        movable = [s for s in instance_starts[1:] if s not in cancelled]
        moved = {
            s: s + timedelta(hours=rng.choice((-2, 1, 3)), days=rng.choice((0, 1)))
            for s in rng.sample(movable, k=min(len(movable), rng.randint(0, 2)))
        }
        exdate = [s for s in instance_starts[1:] if s not in cancelled and s not in moved and rng.random() < 0.03]
        recurrence = [rule]
        if exdate:
            recurrence.append("EXDATE:" + ",".join(d.strftime("%Y%m%dT%H%M%SZ") for d in exdate))
        created = self._between(first_day - timedelta(days=7), first_day)
        people = self._people(engagement, contacts_by_key, roles_by_engagement)
        return Meeting(
            key=f"meeting-{len(self.meetings) + 1:07d}",
            calendar_owner_key=owner.key,
            summary=f"{engagement.jira_project_key} weekly check-in",
            description=f"Regular check-in for {engagement.name}",
            start=start,
            end=start + timedelta(minutes=rng.choice((30, 45, 60))),
            attendees=[self._organizer(owner), *self._client_attendees(engagement, people, 0.05)],
            status="confirmed",
            created=created,
            updated=self._between(created, self.anchor - timedelta(minutes=5)),
            recurrence=recurrence,
            cancelled_occurrences=sorted(cancelled),
            moved_occurrences=moved,
            engagement_key=engagement.key,
        )

    def _one_off(
        self,
        engagement: Engagement,
        users_by_key: dict[str, User],
        contacts_by_key: dict[str, Contact],
        roles_by_engagement: dict[str, list[StakeholderRole]],
    ) -> Meeting:
        rng = self.rng
        owner = users_by_key[engagement.owner_key]
        lapsed = engagement.key in self._neglected
        day = self.anchor + timedelta(days=rng.uniform(-120, -32) if lapsed else rng.uniform(-120, 60))
        start = self._slot(day, rng.randint(7, 16))
        created = min(self._between(start - timedelta(days=21), start), self.anchor - timedelta(hours=1))
        people = self._people(engagement, contacts_by_key, roles_by_engagement)
        status: Literal["confirmed", "tentative", "cancelled"] = "cancelled" if rng.random() < 0.05 else "confirmed"
        return Meeting(
            key=f"meeting-{len(self.meetings) + 1:07d}",
            calendar_owner_key=owner.key,
            summary=f"{rng.choice(ONE_OFF_MEETINGS)}: {engagement.name[:60]}",
            description="Agenda: progress, risks, next steps",
            start=start,
            end=start + timedelta(minutes=rng.choice((30, 60, 90, 120))),
            attendees=[self._organizer(owner), *self._client_attendees(engagement, people, 0.1)],
            status=status,
            created=created,
            updated=self._between(created, self.anchor - timedelta(minutes=5)),
            engagement_key=engagement.key,
            all_day=rng.random() < 0.02,
        )

    def _internal(self, users_by_key: dict[str, User]) -> Meeting:
        rng = self.rng
        owner = rng.choice(self.pms)
        colleagues = rng.sample(self.users, k=min(len(self.users), rng.randint(1, 4)))
        day = self.anchor + timedelta(days=rng.uniform(-120, 60))
        start = self._slot(day, rng.randint(7, 17))
        created = min(self._between(start - timedelta(days=14), start), self.anchor - timedelta(hours=1))
        attendees = [self._organizer(owner)] + [
            Attendee(
                email=u.email,
                display_name=f"{u.first_name} {u.last_name}",
                response=rng.choice(("accepted", "declined", "tentative")),
            )
            for u in colleagues
            if u.key != owner.key
        ]
        return Meeting(
            key=f"meeting-{len(self.meetings) + 1:07d}",
            calendar_owner_key=owner.key,
            summary=rng.choice(INTERNAL_MEETINGS),
            description="",
            start=start,
            end=start + timedelta(minutes=rng.choice((15, 30, 60))),
            attendees=attendees,
            status="cancelled" if rng.random() < 0.04 else "confirmed",
            created=created,
            updated=self._between(created, self.anchor - timedelta(minutes=5)),
            engagement_key=None,
        )

    def build(self) -> World:
        self.make_users()
        self.make_clients()
        self.make_engagements()
        self.make_issues()
        self.make_meetings()
        return World(
            seed=self.seed,
            size=self.size_name,
            generated_at=self.anchor,
            users=self.users,
            clients=self.clients,
            contacts=self.contacts,
            engagements=self.engagements,
            roles=self.roles,
            issues=self.issues,
            meetings=self.meetings,
            internal_domain=INTERNAL_DOMAIN,
        )


def generate_world(size: str = "small", seed: int = 1, anchor: datetime | None = None) -> World:
    """The org of ``size`` ("small", "medium", "large") for ``seed``, laid out around ``anchor``."""
    if anchor is None:
        anchor = datetime.now(UTC).replace(second=0, microsecond=0)
    if anchor.tzinfo is None:
        raise ValueError("anchor must be timezone-aware")
    return _Generator(size, seed, anchor.astimezone(UTC)).build()
