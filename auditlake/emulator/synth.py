"""A synthetic organisation and builders for its audit records.

Shapes follow the Management Activity API schema (common schema plus the workload
fields) and the quirks real tenants produce: ports and brackets in ``ClientIP``,
numbers delivered as strings, placeholder user ids, JSON inside strings, values the
service cut off. Everything is drawn from one ``random.Random`` so a seed fixes the
whole tenant.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import orjson

Record = dict[str, Any]
T = TypeVar("T")

# Well-known first-party application ids, so app-based detections see familiar values.
APP_OFFICE = "d3590ed6-52b3-4102-aeff-4c2e3b4e6b6a"
APP_OUTLOOK_MOBILE = "27922004-5251-4030-b22d-91ecd9a37ea4"
APP_TEAMS = "1fec8e78-bce4-4aaf-ab1b-5451cc387264"
APP_AAD_POWERSHELL = "1b730954-1685-4b74-9bfd-dac224a7b894"
APP_EXCHANGE = "00000002-0000-0ff1-ce00-000000000000"
APP_SHAREPOINT = "00000003-0000-0ff1-ce00-000000000000"
APP_GRAPH = "00000003-0000-0000-c000-000000000000"
APP_SIGNUP = "ead24062-d380-4260-9d1b-3891efe04ccc"

_FIRST = (
    "Alex", "Amira", "Ben", "Carla", "Chen", "Dana", "Diego", "Elena", "Farah", "Gabe", "Hana", "Ivan",
    "Jana", "Kofi", "Lena", "Liam", "Maya", "Mehmet", "Nadia", "Noah", "Olga", "Omar", "Priya", "Quinn",
    "Rosa", "Sam", "Sofia", "Tariq", "Uma", "Victor", "Wen", "Yara", "Zoe", "Hiro", "Ines", "Jonas",
)
_LAST = (
    "Adler", "Baker", "Costa", "Dubois", "Evans", "Fischer", "Garcia", "Haddad", "Ito", "Jensen", "Khan",
    "Larsen", "Moreau", "Novak", "Okafor", "Patel", "Quist", "Rossi", "Silva", "Tanaka", "Ueda", "Vogel",
    "Weber", "Xu", "Young", "Zimmer", "Lindqvist", "Mendes", "Nakamura", "Ortiz",
)
_ORGS = ("contoso", "fabrikam", "northwind", "tailspin", "woodgrove", "adatum", "litware", "proseware")
_DEPARTMENTS = ("Sales", "Finance", "Engineering", "Legal", "Marketing", "Operations", "HR", "Support")
_V4_PREFIXES = (
    "73.162", "98.207", "24.18", "86.21", "81.2", "92.184", "109.150", "176.24", "31.16", "80.229",
    "2.110", "5.148", "62.48", "84.17", "91.64", "151.38", "188.121", "212.58", "67.180", "174.62",
)
_V6_PREFIXES = ("2601:646", "2a02:c7c", "2a01:cb00", "2003:e1", "2600:1700", "2a00:23c5")
_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17425; Pro)",
)
_DEVICES = (("Windows 10", "Edge"), ("Windows 11", "Chrome"), ("MacOs", "Safari"), ("Ios", "Mobile Safari"))
_FILE_NAMES = (
    "Q3 forecast", "Board deck", "Payroll export", "Customer list", "Roadmap", "Contract draft", "Invoice",
    "Team offsite", "Architecture notes", "Budget", "Pricing model", "Onboarding checklist",
)
_FILE_EXTS = ("docx", "xlsx", "pptx", "pdf", "png", "csv", "txt")
_SUBJECTS = (
    "Re: invoice", "Quarterly numbers", "Lunch?", "Updated contract", "Meeting notes", "Travel booking",
    "Payment confirmation", "Draft for review", "Welcome aboard", "Password expiry notice",
)
_MAIL_FOLDERS = ("\\Inbox", "\\Sent Items", "\\Archive", "\\Drafts", "\\Inbox\\Projects", "\\Deleted Items")
_SIT = (
    ("50842eb7-edc8-4019-85dd-5a5c1f2bb085", "Credit Card Number"),
    ("a44669fe-0d48-453d-a9b1-2cc83f2cba77", "U.S. Social Security Number (SSN)"),
    ("cb353f78-2b72-4c3c-8827-92ebe4f69fdf", "ABA Routing Number"),
    ("e7dc4711-11b7-4cb0-b88b-2c394a771f0e", "International Banking Account Number (IBAN)"),
)
_STS_ERRORS = (
    ("50126", "InvalidUserNameOrPassword"),
    ("50074", "UserStrongAuthClientAuthNRequired"),
    ("50140", "KmsiInterrupt"),
    ("50053", "IdsLocked"),
    ("50055", "InvalidPasswordExpiredPassword"),
    ("53003", "BlockedByConditionalAccess"),
    ("50057", "UserDisabled"),
)
_SKUS = (
    ("ENTERPRISEPACK", "6fd2c87f-b296-42f0-b197-1e91e994b900"),
    ("SPE_E5", "06ebc4ee-1bb5-47dd-8120-11324bc54e06"),
    ("FLOW_FREE", "f30db892-07e9-47e9-837c-80727f46fd3d"),
    ("POWER_BI_STANDARD", "a403ebcc-fae0-4ca2-8c8c-7a907fd6c235"),
)
_ROLES = (
    ("62e90394-69f5-4237-9190-012177145e10", "Global Administrator", "CompanyAdministrator"),
    ("29232cdf-9323-42fd-ade2-1d097af3e4de", "Exchange Administrator", "ExchangeServiceAdministrator"),
    ("f28a1f50-f6e7-4571-818b-6a12f2af6b6c", "SharePoint Administrator", "SharePointServiceAdministrator"),
)
_SERVERS = ("AM0PR05MB4803", "HE1PR0102MB3228", "BN8PR12MB3361", "SN6PR04MB4077", "DM6PR11MB2890")


@dataclass(slots=True)
class User:
    """A member of the synthetic tenant."""

    upn: str
    display_name: str
    object_id: str
    puid: str
    sid: str
    mailbox_guid: str
    ips: tuple[str, ...]
    user_agent: str
    device: tuple[str, str]
    admin: bool

    @property
    def mixed_case_upn(self) -> str:
        """The UPN as some services echo it: local part in title case, domain as typed."""
        local, _, domain = self.upn.partition("@")
        return ".".join(p.capitalize() for p in local.split(".")) + "@" + domain.capitalize()


@dataclass(slots=True)
class ServicePrincipal:
    """An enterprise application of the tenant."""

    display_name: str
    app_id: str
    object_id: str


@dataclass(slots=True)
class Site:
    """A SharePoint site or OneDrive; ``owner`` is set for a OneDrive."""

    url: str
    title: str
    site_id: str
    web_id: str
    list_id: str
    owner: User | None


class Dice:
    """Cheap random draws on one shared ``random.Random``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, seq: Sequence[T]) -> T:
        """A uniformly chosen element of *seq* (cheaper than ``Random.choice``)."""
        return seq[int(self.rng.random() * len(seq))]

    def rint(self, lo: int, hi: int | None = None) -> int:
        """A uniform integer in ``[lo, hi)``, or ``[0, lo)`` when *hi* is omitted."""
        if hi is None:
            lo, hi = 0, lo
        return lo + int(self.rng.random() * (hi - lo))

    def hex(self, n: int) -> str:
        """*n* random lower-case hex digits."""
        return f"{self.rng.getrandbits(4 * n):0{n}x}"

    def guid(self) -> str:
        """A random GUID in the canonical 8-4-4-4-12 form."""
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class World(Dice):
    """The organisation records are about: users, apps, sites and the tenant's network egress."""

    def __init__(self, rng: random.Random, tenant_id: str, n_users: int) -> None:
        super().__init__(rng)
        self.tenant_id = tenant_id
        self.org = f"{rng.choice(_ORGS)}{tenant_id[:2]}"
        self.domain = f"{self.org}.onmicrosoft.com"
        self.sp_host = f"https://{self.org}.sharepoint.com"
        self.od_host = f"https://{self.org}-my.sharepoint.com"
        self.office_ips = tuple(self.public_v4() for _ in range(3))
        names = list(itertools.product(_FIRST, _LAST))
        rng.shuffle(names)
        self.users: list[User] = []
        for i, (first, last) in enumerate(names[: max(n_users, 12)]):
            self.users.append(self._user(first, last, admin=i < max(2, n_users // 25)))
        self.admins = [u for u in self.users if u.admin]
        self.apps = [
            ServicePrincipal(name, self.guid(), self.guid())
            for name in ("Payroll Sync", "HR Connector", "Backup Service", "CRM Mail Connector", "Reporting Bot")
        ]
        self.system_sps = [
            ServicePrincipal("Microsoft Substrate Management", self.guid(), self.guid()),
            ServicePrincipal("Azure MFA StrongAuthenticationService", self.guid(), self.guid()),
            ServicePrincipal("Signup", APP_SIGNUP, self.guid()),
        ]
        self.sites = [
            Site(f"{self.sp_host}/sites/{name}", name, self.guid(), self.guid(), self.guid(), None)
            for name in ("Finance", "Legal", "AllCompany", "Engineering", "SalesTeam", "Projects")
        ]
        self.onedrives = [
            Site(
                f"{self.od_host}/personal/{u.upn.replace('.', '_').replace('@', '_')}",
                "Documents",
                self.guid(),
                self.guid(),
                self.guid(),
                u,
            )
            for u in self.users
        ]
        self.teams = [
            (name, f"19:{self.hex(32)}@thread.tacv2", self.guid())
            for name in ("All Company", "Finance Team", "Engineering", "Sales EMEA", "Leadership")
        ]

    def public_v4(self) -> str:
        """A public-looking IPv4 address."""
        return f"{self.pick(_V4_PREFIXES)}.{self.rint(1, 255)}.{self.rint(1, 255)}"

    def public_v6(self) -> str:
        """A public-looking IPv6 address in compressed form."""
        r = self.rng
        groups = ":".join(f"{r.getrandbits(16):x}" for _ in range(4))
        return f"{self.pick(_V6_PREFIXES)}:{r.getrandbits(16):x}:{r.getrandbits(16):x}:{groups}"

    def _user(self, first: str, last: str, *, admin: bool) -> User:
        upn = f"{first.lower()}.{last.lower()}@{self.domain}"
        ips = (self.pick(self.office_ips), self.public_v4(), self.public_v6())
        sid = f"S-1-5-21-{self.rint(10**9, 4 * 10**9)}-{self.rint(10**9, 4 * 10**9)}-" \
              f"{self.rint(10**9, 4 * 10**9)}-{self.rint(10**6, 10**8)}"
        return User(
            upn=upn,
            display_name=f"{first} {last}",
            object_id=self.guid(),
            puid=f"1003{self.hex(12).upper()}",
            sid=sid,
            mailbox_guid=self.guid(),
            ips=ips,
            user_agent=self.pick(_USER_AGENTS),
            device=self.pick(_DEVICES),
            admin=admin,
        )


def creation_time(t: datetime) -> str:
    """``CreationTime`` as the service writes it: UTC, seconds, no zone."""
    return t.isoformat(timespec="seconds")[:19]


def crlf_json(value: Any) -> str:
    """JSON pretty-printed with CRLF line ends, the way Entra ID writes ModifiedProperties values."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode().replace("\n", "\r\n")


def name_values(pairs: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """A ``[{"Name", "Value"}]`` array."""
    return [{"Name": n, "Value": v} for n, v in pairs]


def modified(props: Sequence[tuple[str, str, str]], *, include_summary: bool = True) -> list[dict[str, str]]:
    """A ModifiedProperties array, with the service's "Included Updated Properties" pseudo-entry."""
    out = [{"Name": n, "OldValue": o, "NewValue": v} for n, o, v in props]
    if include_summary and props:
        summary = ", ".join(n for n, _, _ in props)
        out.append({"Name": "Included Updated Properties", "OldValue": "", "NewValue": summary})
    return out


class RecordFactory(Dice):
    """Builds audit records for one :class:`World`; ``make(content_type, t)`` draws background noise.

    Each ``bg_*`` method returns one background record at the given time; the other builders
    take explicit actors and values so the scripted incident can say exactly what happened.
    """

    def __init__(self, rng: random.Random, world: World) -> None:
        super().__init__(rng)
        self.w = world
        self.tid = world.tenant_id
        self._mix: dict[str, tuple[list[Callable[[datetime], Record]], list[float]]] = {}
        for ct, table in self._mixes().items():
            cum = list(itertools.accumulate(weight for _, weight in table))
            self._mix[ct] = ([b for b, _ in table], [c / cum[-1] for c in cum])

    def _mixes(self) -> dict[str, list[tuple[Callable[[datetime], Record], float]]]:
        return {
            "Audit.AzureActiveDirectory": [
                (self.bg_login_ok, 70), (self.bg_login_failed, 12), (self.bg_update_user, 6),
                (self.bg_group_member, 4), (self.bg_license, 2.5), (self.bg_add_user, 1.5),
                (self.bg_role_member, 0.7), (self.bg_sp_credentials, 0.5), (self.bg_update_application, 1),
                (self.bg_reset_password, 1),
            ],
            "Audit.Exchange": [
                (self.bg_mail_items_accessed, 45), (self.bg_exchange_item, 30), (self.bg_exchange_item_group, 12),
                (self.bg_exchange_admin, 8), (self.bg_inbox_rule, 1),
            ],
            "Audit.SharePoint": [(self.bg_file_op, 80), (self.bg_page_viewed, 10), (self.bg_sharing, 8)],
            "Audit.General": [
                (self.bg_teams, 45), (self.bg_powerbi, 25), (self.bg_copilot, 22), (self.bg_alert, 5),
            ],
            "DLP.All": [(self.bg_dlp_sharepoint, 55), (self.bg_dlp_exchange, 45)],
        }

    # ----------------------------------------------------------------- helpers

    def make(self, content_type: str, t: datetime) -> Record:
        """A background record of *content_type* at *t*, with the service's odd values now and then."""
        builders, cum = self._mix[content_type]
        rec = builders[bisect.bisect_left(cum, self.rng.random())](t)
        self.quirk(rec)
        return rec

    def quirk(self, rec: Record) -> None:
        """Now and then rewrite a field the way some real records carry it (types as strings, 7-digit time)."""
        u = self.rng.random()
        if u >= 0.012:
            return
        if u < 0.003:
            rec["RecordType"] = str(rec["RecordType"])
        elif u < 0.006:
            rec["UserType"] = str(rec["UserType"])
        elif u < 0.008:
            rec["Version"] = str(rec.get("Version", 1))
        elif u < 0.010:
            rec["CreationTime"] = f"{rec['CreationTime']}.{self.rint(10**7):07d}"
        elif "ClientIP" in rec:
            rec["ClientIP"] = self.pick(("", "::1"))

    def user(self) -> User:
        """A random user; heavier users come up more often (the first tenth of the list)."""
        users = self.w.users
        if self.rng.random() < 0.3:
            return users[self.rint(max(1, len(users) // 10))]
        return users[self.rint(len(users))]

    def user_id(self, u: User) -> str:
        """The UserId a service writes for *u*: usually the UPN, sometimes in mixed case."""
        return u.mixed_case_upn if self.rng.random() < 0.03 else u.upn

    def plain_ip(self, u: User) -> str:
        """One of *u*'s addresses, mostly the office egress."""
        r = self.rng.random()
        return u.ips[0] if r < 0.6 else u.ips[1] if r < 0.92 else u.ips[2]

    def exchange_ip(self, ip: str) -> str:
        """``ClientIP`` as Exchange writes it: bare, with a port, bracketed, or v4-mapped."""
        if ":" in ip:
            return f"[{ip}]:{self.rint(1024, 65535)}" if self.rng.random() < 0.3 else ip
        r = self.rng.random()
        if r < 0.7:
            return ip
        port = self.rint(1024, 65535)
        if r < 0.85:
            return f"{ip}:{port}"
        if r < 0.93:
            return f"[{ip}]:{port}"
        return f"[::ffff:{ip}]:{port}"

    def base(
        self,
        t: datetime,
        record_type: int,
        operation: str,
        workload: str,
        *,
        user_id: str,
        user_key: str,
        user_type: int,
        object_id: str | None,
        client_ip: str | None,
        result: str | None = "Succeeded",
        record_id: str | None = None,
    ) -> Record:
        """The common schema, keys in the order the service writes them."""
        rec: Record = {
            "CreationTime": creation_time(t),
            "Id": record_id or self.w.guid(),
            "Operation": operation,
            "OrganizationId": self.tid,
            "RecordType": record_type,
        }
        if result is not None:
            rec["ResultStatus"] = result
        rec["UserKey"] = user_key
        rec["UserType"] = user_type
        rec["Version"] = 1
        rec["Workload"] = workload
        if client_ip is not None:
            rec["ClientIP"] = client_ip
        if object_id is not None:
            rec["ObjectId"] = object_id
        rec["UserId"] = user_id
        return rec

    # ---------------------------------------------------------- Entra ID (15, 8)

    def sts_logon(
        self,
        t: datetime,
        u: User,
        *,
        ok: bool,
        ip: str,
        app_id: str = APP_OFFICE,
        user_agent: str | None = None,
        error: tuple[str, str] | None = None,
        request_type: str = "OAuth2:Authorize",
        session_id: str | None = None,
    ) -> Record:
        """A UserLoggedIn / UserLoginFailed record (RecordType 15)."""
        op = "UserLoggedIn" if ok else "UserLoginFailed"
        resource = self.pick((APP_EXCHANGE, APP_SHAREPOINT, APP_GRAPH))
        rec = self.base(
            t, 15, op, "AzureActiveDirectory", user_id=self.user_id(u), user_key=u.object_id, user_type=0,
            object_id=resource, client_ip=ip, result="Success" if ok else "Failed",
        )
        rec["AzureActiveDirectoryEventType"] = 1
        rec["ExtendedProperties"] = name_values((
            ("ResultStatusDetail", "Success" if ok else self.pick(("UserError", "Success"))),
            ("UserAgent", user_agent if user_agent is not None else u.user_agent),
            ("UserAuthenticationMethod", "1"),
            ("RequestType", request_type),
        ))
        rec["ModifiedProperties"] = []
        rec["Actor"] = [{"ID": u.object_id, "Type": 0}, {"ID": u.upn, "Type": 5}]
        rec["ActorContextId"] = self.tid
        rec["ActorIpAddress"] = ip
        rec["InterSystemsId"] = self.w.guid()
        rec["IntraSystemId"] = self.w.guid()
        rec["SupportTicketId"] = ""
        rec["Target"] = [{"ID": resource, "Type": 0}]
        rec["TargetContextId"] = self.tid
        rec["ApplicationId"] = app_id
        os_name, browser = u.device
        rec["DeviceProperties"] = name_values((
            ("OS", os_name), ("BrowserType", browser), ("IsCompliantAndManaged", "False"),
            ("TrustType", self.pick(("0", "1", "2"))), ("SessionId", session_id or self.w.guid()),
        ))
        code, logon_error = ("0", None) if ok else (error or self.pick(_STS_ERRORS))
        rec["ErrorCode"] = code
        if logon_error:
            rec["LogonError"] = logon_error
        return rec

    def user_actor(self, u: User) -> list[dict[str, Any]]:
        """Actor[] of an Entra ID change made by a user."""
        return [
            {"ID": u.upn, "Type": 5}, {"ID": u.puid, "Type": 3}, {"ID": f"User_{u.object_id}", "Type": 2},
            {"ID": u.object_id, "Type": 2}, {"ID": "User", "Type": 2},
        ]

    def sp_actor(self, sp: ServicePrincipal) -> list[dict[str, Any]]:
        """Actor[] of an Entra ID change made by a service principal."""
        return [
            {"ID": sp.display_name, "Type": 1}, {"ID": sp.app_id, "Type": 2},
            {"ID": f"ServicePrincipal_{sp.object_id}", "Type": 2}, {"ID": sp.object_id, "Type": 2},
            {"ID": "ServicePrincipal", "Type": 2},
        ]

    def user_target(self, u: User) -> list[dict[str, Any]]:
        """Target[] naming a user."""
        return [
            {"ID": f"User_{u.object_id}", "Type": 2}, {"ID": u.object_id, "Type": 2}, {"ID": "User", "Type": 2},
            {"ID": u.upn, "Type": 5}, {"ID": u.puid, "Type": 3},
        ]

    def sp_target(self, sp: ServicePrincipal) -> list[dict[str, Any]]:
        """Target[] naming a service principal."""
        return [
            {"ID": f"ServicePrincipal_{sp.object_id}", "Type": 2}, {"ID": sp.object_id, "Type": 2},
            {"ID": "ServicePrincipal", "Type": 2}, {"ID": sp.display_name, "Type": 1},
            {"ID": sp.app_id, "Type": 2}, {"ID": sp.app_id, "Type": 4},
        ]

    def directory(
        self,
        t: datetime,
        operation: str,
        *,
        actor: User | ServicePrincipal,
        target: list[dict[str, Any]],
        object_id: str | None,
        props: list[dict[str, str]],
        category: str = "User",
        ip: str | None = "",
        additional: dict[str, Any] | None = None,
    ) -> Record:
        """An Entra ID directory change (RecordType 8)."""
        if isinstance(actor, User):
            uid, key, actors = self.user_id(actor), f"{actor.puid}@{self.w.domain}", self.user_actor(actor)
        else:
            uid, key, actors = f"ServicePrincipal_{actor.object_id}", "Not Available", self.sp_actor(actor)
        rec = self.base(
            t, 8, operation, "AzureActiveDirectory", user_id=uid, user_key=key,
            user_type=0 if isinstance(actor, User) else 4, object_id=object_id, client_ip=ip, result="Success",
        )
        rec["AzureActiveDirectoryEventType"] = 1
        rec["ExtendedProperties"] = name_values((
            ("additionalDetails", orjson.dumps(additional or {}).decode()),
            ("extendedAuditEventCategory", category),
        ))
        rec["ModifiedProperties"] = props
        rec["Actor"] = actors
        rec["ActorContextId"] = self.tid
        if ip:
            rec["ActorIpAddress"] = ip
        rec["InterSystemsId"] = self.w.guid()
        rec["IntraSystemId"] = self.w.guid()
        rec["SupportTicketId"] = ""
        rec["Target"] = target
        rec["TargetContextId"] = self.tid
        return rec

    def license_props(self, t: datetime, sku: tuple[str, str], *, plans: bool) -> list[dict[str, str]]:
        """AssignedLicense (and AssignedPlan) changes, as JSON-in-strings."""
        name, sku_id = sku
        lic = f"[SkuName={name}, AccountId={self.tid}, SkuId={sku_id}, DisabledPlans=[]]"
        props = [("AssignedLicense", "[]", crlf_json([lic]))]
        if plans:
            plan = [
                {
                    "SubscribedPlanId": self.w.guid(), "ServiceInstance": f"{svc}/NAMPR0{self.rint(1, 9)}",
                    "CapabilityStatus": 0, "AssignedTimestamp": t.strftime("%Y-%m-%dT%H:%M:%S.0000000Z"),
                    "InitialState": None, "Capability": None, "ServicePlanId": self.w.guid(),
                }
                for svc in ("exchange", "SharePoint", "TeamspaceAPI")
            ]
            props.append(("AssignedPlan", "[]", crlf_json(plan)))
        return modified(props)

    def bg_login_ok(self, t: datetime) -> Record:
        u = self.user()
        app = self.pick((APP_OFFICE, APP_OFFICE, APP_OUTLOOK_MOBILE, APP_TEAMS))
        ip = self.plain_ip(u)
        return self.sts_logon(t, u, ok=True, ip=ip, app_id=app)

    def bg_login_failed(self, t: datetime) -> Record:
        u = self.user()
        return self.sts_logon(t, u, ok=False, ip=self.plain_ip(u), request_type="Login:login")

    def bg_update_user(self, t: datetime) -> Record:
        u = self.user()
        r = self.rng.random()
        if r < 0.35:
            props = modified([("StrongAuthenticationMethod", "[]", crlf_json([{"MethodType": 7, "Default": True}]))])
            actor: User | ServicePrincipal = self.w.system_sps[1]
        elif r < 0.7:
            old, new = self.rng.sample(_DEPARTMENTS, 2)
            props = modified([("Department", crlf_json([old]), crlf_json([new]))])
            actor = self.pick(self.w.admins)
        elif r < 0.9:
            props = modified([("LastDirSyncTime", crlf_json([creation_time(t - timedelta(days=1)) + "Z"]),
                               crlf_json([creation_time(t) + "Z"]))])
            actor = self.w.system_sps[0]
        else:
            props = self.license_props(t, self.pick(_SKUS), plans=True)
            actor = self.pick(self.w.admins)
        return self.directory(t, "Update user.", actor=actor, target=self.user_target(u), object_id=u.upn, props=props)

    def bg_group_member(self, t: datetime) -> Record:
        u, admin = self.user(), self.pick(self.w.admins)
        name, _, gid = self.pick(self.w.teams)
        props = modified(
            [("Group.ObjectID", "", gid), ("Group.DisplayName", "", name), ("Group.WellKnownObjectName", "", "")],
            include_summary=False,
        )
        return self.directory(
            t, "Add member to group.", actor=admin, target=self.user_target(u), object_id=u.upn, props=props,
            category="GroupManagement", ip=self.plain_ip(admin),
        )

    def bg_license(self, t: datetime) -> Record:
        u, admin = self.user(), self.pick(self.w.admins)
        props = [] if self.rng.random() < 0.7 else self.license_props(t, self.pick(_SKUS), plans=False)
        return self.directory(
            t, "Change user license.", actor=admin, target=self.user_target(u), object_id=u.upn, props=props,
        )

    def bg_add_user(self, t: datetime) -> Record:
        admin = self.pick(self.w.admins)
        first, last = self.pick(_FIRST), self.pick(_LAST)
        new = User(
            upn=f"{first.lower()}.{last.lower()}{self.rint(2, 99)}@{self.w.domain}",
            display_name=f"{first} {last}", object_id=self.w.guid(), puid=f"1003{self.w.hex(12).upper()}",
            sid="", mailbox_guid="", ips=(), user_agent="", device=("", ""), admin=False,
        )
        props = modified([
            ("AccountEnabled", "", crlf_json([True])), ("DisplayName", "", crlf_json([new.display_name])),
            ("UserPrincipalName", "", crlf_json([new.upn])), ("UserType", "", crlf_json(["Member"])),
        ])
        return self.directory(
            t, "Add user.", actor=admin, target=self.user_target(new), object_id=new.upn, props=props,
            ip=self.plain_ip(admin), additional={"UserType": "Member"},
        )

    def role_member(self, t: datetime, actor: User, u: User, role: tuple[str, str, str]) -> Record:
        """An "Add member to role." record naming *role* (template id, display name, well-known name)."""
        template, display, wk = role
        props = modified(
            [("Role.ObjectID", "", self.w.guid()), ("Role.DisplayName", "", display),
             ("Role.TemplateId", "", template), ("Role.WellKnownObjectName", "", wk)],
            include_summary=False,
        )
        return self.directory(
            t, "Add member to role.", actor=actor, target=self.user_target(u), object_id=u.upn, props=props,
            category="RoleManagement", ip=self.plain_ip(actor),
        )

    def bg_role_member(self, t: datetime) -> Record:
        return self.role_member(t, self.pick(self.w.admins), self.user(), self.pick(_ROLES))

    def sp_credentials(self, t: datetime, actor: User, sp: ServicePrincipal, ip: str) -> Record:
        """An "Add service principal credentials." record on *sp*."""
        key = f"[KeyIdentifier={self.w.guid()},KeyType=Password,KeyUsage=Verify,DisplayName=]"
        props = modified([("KeyDescription", "[]", crlf_json([key]))])
        return self.directory(
            t, "Add service principal credentials.", actor=actor, target=self.sp_target(sp), object_id=sp.object_id,
            props=props, category="ApplicationManagement", ip=ip,
        )

    def bg_sp_credentials(self, t: datetime) -> Record:
        admin = self.pick(self.w.admins)
        return self.sp_credentials(t, admin, self.pick(self.w.apps), self.plain_ip(admin))

    def bg_update_application(self, t: datetime) -> Record:
        admin, sp = self.pick(self.w.admins), self.pick(self.w.apps)
        access = [
            {"ResourceAppId": APP_GRAPH, "RequiredAppPermissions": [
                {"EntitlementId": self.w.guid(), "DirectAccessGrant": self.rng.random() < 0.5,
                 "ImpersonationAccessGrants": []} for _ in range(self.rint(2, 9))
            ], "EncodingVersion": 1},
        ]
        new = crlf_json(access)
        if self.rng.random() < 0.1:
            # The service cuts long values off and appends "..."; the result is not JSON.
            new = new[: len(new) // 2] + "..."
        props = modified([("RequiredResourceAccess", "[]", new)])
        return self.directory(
            t, "Update application.", actor=admin, target=self.sp_target(sp), object_id="Not Available",
            props=props, category="ApplicationManagement", ip=self.plain_ip(admin),
        )

    def bg_reset_password(self, t: datetime) -> Record:
        u = self.user()
        if self.rng.random() < 0.5:
            return self.directory(t, "Reset user password.", actor=u, target=self.user_target(u), object_id=u.upn,
                                  props=[], ip=self.plain_ip(u))
        admin = self.pick(self.w.admins)
        rec = self.directory(t, "Reset user password.", actor=admin, target=self.user_target(u), object_id=u.upn,
                             props=[], ip=None)
        rec["UserId"] = self.pick(("Not Available", "Unknown"))
        return rec

    # --------------------------------------------------------- Exchange (50, 2, 3, 1)

    def mailbox_fields(self, rec: Record, actor: User, owner: User, ip: str, *, logon_type: int = 0) -> None:
        """The Exchange mailbox-audit fields shared by record types 2, 3 and 50."""
        rec["AppId"] = rec.get("AppId", "")
        rec["ClientAppId"] = rec.get("ClientAppId", "")
        rec["ClientIPAddress"] = ip
        rec["ExternalAccess"] = False
        rec["InternalLogonType"] = logon_type
        rec["LogonType"] = logon_type
        rec["LogonUserSid"] = actor.sid
        rec["MailboxGuid"] = owner.mailbox_guid
        rec["MailboxOwnerSid"] = owner.sid
        rec["MailboxOwnerUPN"] = owner.upn
        rec["OrganizationName"] = self.w.domain
        rec["OriginatingServer"] = f"{self.pick(_SERVERS)} (15.20.{self.rint(7000, 8000)}.0{self.rint(10, 40)})"

    def message_id(self) -> str:
        """An Internet Message-ID in Exchange Online's shape."""
        server = self.pick(_SERVERS)
        return f"<{server}{self.w.hex(32).upper()}@{server}.namprd0{self.rint(1, 9)}.prod.outlook.com>"

    def folder_item(self, message_id: str | None = None) -> dict[str, Any]:
        """One entry of ``FolderItems``."""
        size: int | float = self.rint(2_000, 2_000_000)
        if self.rng.random() < 0.05:
            size = float(size)
        return {
            "Id": "AAMkA" + self.w.hex(90),
            "ImmutableId": "LgAAAA" + self.w.hex(60),
            "InternetMessageId": message_id or self.message_id(),
            "SizeInBytes": size,
        }

    def mail_items_accessed(
        self,
        t: datetime,
        actor: User,
        *,
        owner: User | None = None,
        access: str = "Bind",
        ip: str,
        client_ip: str | None = None,
        session_id: str | None = None,
        app_id: str = APP_OFFICE,
        client_info: str | None = None,
        message_ids: Sequence[str] = (),
        app_only: bool = False,
    ) -> Record:
        """A MailItemsAccessed record (RecordType 50): Bind lists the items, Sync only the folders."""
        owner = owner or actor
        rec = self.base(
            t, 50, "MailItemsAccessed", "Exchange", user_id=owner.upn if app_only else self.user_id(actor),
            user_key=app_id if app_only else actor.puid, user_type=5 if app_only else 0, object_id=None,
            client_ip=client_ip if client_ip is not None else self.exchange_ip(ip),
        )
        rec["AppId"] = app_id
        rec["ClientAppId"] = app_id if app_only else ""
        sid = session_id or self.w.guid()
        rec["AppAccessContext"] = {
            "AADSessionId": sid, "ClientAppId": app_id, "IssuedAtTime": creation_time(t - timedelta(minutes=5)),
            "UniqueTokenId": self.w.hex(22),
        }
        rec["ClientInfoString"] = client_info or self.pick((
            f"Client=OWA;Action=ViaProxy;{actor.user_agent};",
            "Client=REST;Client=RESTSystem;;",
            "Client=MSExchangeRPC",
            "Client=OutlookService;Outlook-iOS/2.0;",
        ))
        self.mailbox_fields(rec, actor, owner, ip)
        if access == "Bind":
            ids = list(message_ids) or [self.message_id() for _ in range(self.rint(1, 6))]
            folders: list[dict[str, Any]] = []
            for chunk_start in range(0, len(ids), 3):
                folders.append({
                    "Id": "LgAAAA" + self.w.hex(40),
                    "Path": self.pick(_MAIL_FOLDERS),
                    "FolderItems": [self.folder_item(m) for m in ids[chunk_start : chunk_start + 3]],
                })
            rec["OperationCount"] = len(ids)
        else:
            folders = [{"Id": "LgAAAA" + self.w.hex(40), "Path": self.pick(_MAIL_FOLDERS)}]
            rec["OperationCount"] = 1
        rec["Folders"] = folders
        rec["OperationProperties"] = name_values((("MailAccessType", access), ("IsThrottled", "False")))
        rec["SessionId"] = sid
        return rec

    def bg_mail_items_accessed(self, t: datetime) -> Record:
        if self.rng.random() < 0.06:
            app = self.pick(self.w.apps)
            owner = self.user()
            return self.mail_items_accessed(
                t, owner, owner=owner, ip=self.w.office_ips[0], app_id=app.app_id, app_only=True,
                client_info="Client=REST;Client=RESTSystem;;",
            )
        u = self.user()
        access = "Bind" if self.rng.random() < 0.8 else "Sync"
        return self.mail_items_accessed(t, u, access=access, ip=self.plain_ip(u))

    def bg_exchange_item(self, t: datetime) -> Record:
        u = self.user()
        op = self.pick(("Send", "Send", "Create", "Update", "MailboxLogin"))
        ip = self.plain_ip(u)
        rec = self.base(t, 2, op, "Exchange", user_id=self.user_id(u), user_key=u.puid, user_type=0,
                        object_id=None, client_ip=self.exchange_ip(ip))
        self.mailbox_fields(rec, u, u, ip)
        rec["ClientInfoString"] = f"Client=OWA;Action=ViaProxy;{u.user_agent};"
        if op != "MailboxLogin":
            rec["Item"] = {
                "Id": "RgAAAA" + self.w.hex(60),
                "InternetMessageId": self.message_id(),
                "ParentFolder": {"Id": "LgAAAA" + self.w.hex(40),
                                 "Path": "\\Sent Items" if op == "Send" else "\\Drafts"},
                "SizeInBytes": self.rint(2_000, 400_000),
                "Subject": self.pick(_SUBJECTS),
                "Attachments": "" if self.rng.random() < 0.8 else f"scan{self.rint(99)}.pdf (48213b)",
            }
        return rec

    def bg_exchange_item_group(self, t: datetime) -> Record:
        u = self.user()
        op = self.pick(("SoftDelete", "MoveToDeletedItems", "HardDelete", "Move"))
        ip = self.plain_ip(u)
        rec = self.base(t, 3, op, "Exchange", user_id=self.user_id(u), user_key=u.puid, user_type=0,
                        object_id=None, client_ip=self.exchange_ip(ip))
        self.mailbox_fields(rec, u, u, ip)
        rec["CrossMailboxOperation"] = False
        rec["Folder"] = {"Id": "LgAAAA" + self.w.hex(40), "Path": self.pick(_MAIL_FOLDERS)}
        rec["AffectedItems"] = [
            {"Id": "RgAAAA" + self.w.hex(60), "InternetMessageId": self.message_id(),
             "ParentFolder": {"Id": "LgAAAA" + self.w.hex(40), "Path": "\\Inbox"},
             "Subject": self.pick(_SUBJECTS)}
            for _ in range(self.rint(1, 4))
        ]
        return rec

    def exchange_admin(
        self,
        t: datetime,
        operation: str,
        params: list[dict[str, str]] | str,
        *,
        actor: User | None,
        object_id: str,
        client_ip: str | None,
    ) -> Record:
        """An Exchange admin cmdlet record (RecordType 1); ``actor=None`` is the service itself."""
        if actor is None:
            uid = key = "NT AUTHORITY\\SYSTEM (Microsoft.Exchange.ServiceHost)"
            user_type = 3
        else:
            uid, key, user_type = self.user_id(actor), actor.puid, 2 if actor.admin else 0
        rec = self.base(t, 1, operation, "Exchange", user_id=uid, user_key=key, user_type=user_type,
                        object_id=object_id, client_ip=client_ip, result="True")
        rec["AppId"] = ""
        rec["ClientAppId"] = ""
        rec["ExternalAccess"] = actor is None
        rec["OrganizationName"] = self.w.domain
        server = f"{self.pick(_SERVERS)} (15.20.{self.rint(7000, 8000)}.0{self.rint(10, 40)})"
        rec["OriginatingServer"] = server + ("\r\n" if self.rng.random() < 0.05 else "")
        rec["Parameters"] = params
        return rec

    def bg_exchange_admin(self, t: datetime) -> Record:
        u = self.user()
        r = self.rng.random()
        if r < 0.55:
            params = name_values((("Identity", u.upn), ("RetainDeletedItemsFor", "30.00:00:00"),
                                  ("AuditEnabled", "True")))
            rec = self.exchange_admin(t, "Set-Mailbox", params, actor=None, object_id=u.upn, client_ip=None)
        elif r < 0.8:
            admin = self.pick(self.w.admins)
            params = name_values((("Identity", u.upn), ("User", self.user().upn), ("AccessRights", "FullAccess"),
                                  ("InheritanceType", "All")))
            rec = self.exchange_admin(t, "Add-MailboxPermission", params, actor=admin, object_id=u.upn,
                                      client_ip=self.exchange_ip(self.plain_ip(admin)))
        else:
            admin = self.pick(self.w.admins)
            params = name_values((("Identity", u.upn), ("LitigationHoldEnabled", "True")))
            rec = self.exchange_admin(t, "Set-Mailbox", params, actor=admin, object_id=u.upn,
                                      client_ip=self.exchange_ip(self.plain_ip(admin)))
        if self.rng.random() < 0.02:
            # Some records carry Parameters as one string instead of a name/value array.
            params_list = rec["Parameters"]
            rec["Parameters"] = " ".join(f"-{p['Name']} \"{p['Value']}\"" for p in params_list)
        return rec

    def bg_inbox_rule(self, t: datetime) -> Record:
        u = self.user()
        params = name_values((
            ("Name", self.pick(("Newsletters", "From boss", "Receipts"))),
            ("From", self.user().upn), ("MoveToFolder", "Inbox\\Filed"), ("StopProcessingRules", "True"),
        ))
        return self.exchange_admin(t, "New-InboxRule", params, actor=u, object_id=f"{u.upn}\\{params[0]['Value']}",
                                   client_ip=self.exchange_ip(self.plain_ip(u)))

    # ------------------------------------------------------ SharePoint (6, 4, 14)

    def sharepoint_base(self, t: datetime, rt: int, op: str, u: User, site: Site, object_id: str) -> Record:
        """Common SharePoint/OneDrive fields for a user action on *site*."""
        workload = "OneDrive" if site.owner is not None else "SharePoint"
        ip = self.plain_ip(u)
        rec = self.base(t, rt, op, workload, user_id=self.user_id(u),
                        user_key=f"i:0h.f|membership|{u.puid.lower()}@live.com", user_type=0,
                        object_id=object_id, client_ip=ip, result=None)
        rec["CorrelationId"] = self.w.guid()
        rec["EventSource"] = "SharePoint"
        rec["ItemType"] = "File"
        rec["ListId"] = site.list_id
        rec["ListItemUniqueId"] = self.w.guid()
        rec["Site"] = site.site_id
        rec["UserAgent"] = u.user_agent
        rec["WebId"] = site.web_id
        rec["SiteUrl"] = site.url + "/"
        return rec

    def pick_site(self, u: User) -> Site:
        """A team site, or the user's own (or a colleague's) OneDrive."""
        if self.rng.random() < 0.35:
            return self.pick(self.w.onedrives)
        return self.pick(self.w.sites)

    def file_ref(self, site: Site) -> tuple[str, str, str, str]:
        """(relative folder, file name, extension, full URL) of a file on *site*."""
        ext = self.pick(_FILE_EXTS)
        name = f"{self.pick(_FILE_NAMES)}{'' if self.rng.random() < 0.6 else f' v{self.rint(2, 9)}'}.{ext}"
        folder = "Documents" if site.owner else self.pick(("Shared Documents", "Shared Documents/Archive"))
        return folder, name, ext, f"{site.url}/{folder}/{name}"

    def bg_file_op(self, t: datetime) -> Record:
        u = self.user()
        site = self.pick_site(u)
        folder, name, ext, url = self.file_ref(site)
        op = self.rng.choices(
            ("FileAccessed", "FileModified", "FileDownloaded", "FileUploaded", "FilePreviewed", "FileDeleted"),
            cum_weights=(40, 55, 65, 73, 78, 80),
        )[0]
        rec = self.sharepoint_base(t, 6, op, u, site, url)
        rec["SourceRelativeUrl"] = folder
        rec["SourceFileName"] = name
        rec["SourceFileExtension"] = ext
        rec["ApplicationId"] = self.pick((APP_OFFICE, APP_TEAMS, APP_SHAREPOINT))
        rec["GeoLocation"] = "NAM"
        rec["IsManagedDevice"] = self.rng.random() < 0.6
        rec["Platform"] = self.pick(("WinDesktop", "MacDesktop", "iOS"))
        rec["AuthenticationType"] = "OAuth"
        return rec

    def bg_page_viewed(self, t: datetime) -> Record:
        u = self.user()
        site = self.pick(self.w.sites)
        rec = self.sharepoint_base(t, 4, "PageViewed", u, site, f"{site.url}/SitePages/Home.aspx")
        rec["ItemType"] = "Page"
        return rec

    def bg_sharing(self, t: datetime) -> Record:
        u = self.user()
        site = self.pick_site(u)
        folder, name, ext, url = self.file_ref(site)
        op = self.pick(("SharingSet", "SharingSet", "AnonymousLinkCreated", "SharingInvitationCreated",
                              "CompanyLinkCreated", "AddedToSecureLink"))
        rec = self.sharepoint_base(t, 14, op, u, site, url)
        rec["SourceRelativeUrl"] = folder
        rec["SourceFileName"] = name
        rec["SourceFileExtension"] = ext
        if op == "SharingSet":
            target = self.user()
            rec["TargetUserOrGroupName"] = target.upn
            rec["TargetUserOrGroupType"] = self.pick(("Member", "Member", "Guest", "SharePointGroup"))
            rec["EventData"] = f"<PermissionsGranted>{self.pick(('Read', 'Contribute'))}</PermissionsGranted>"
        elif op == "SharingInvitationCreated":
            rec["TargetUserOrGroupName"] = f"partner{self.rint(99)}@partner.example"
            rec["TargetUserOrGroupType"] = "Guest"
            rec["EventData"] = "<Type>Edit</Type>"
        else:
            rec["EventData"] = f"<Type>{self.pick(('View', 'Edit'))}</Type>"
            rec["UniqueSharingId"] = self.w.guid()
        return rec

    # ------------------------------------------------- General (25, 20, 261, 40)

    def bg_teams(self, t: datetime) -> Record:
        u = self.user()
        team, team_guid, group_id = self.pick(self.w.teams)
        op = self.pick(("TeamsSessionStarted", "TeamsSessionStarted", "MemberAdded", "ChatCreated",
                              "MessageSent"))
        rec = self.base(t, 25, op, "MicrosoftTeams", user_id=self.user_id(u), user_key=u.object_id, user_type=0,
                        object_id=None, client_ip=self.plain_ip(u), result=None)
        if op == "TeamsSessionStarted":
            rec["ExtraProperties"] = [{"Key": "TimeZone", "Value": "UTC"},
                                      {"Key": "OsName", "Value": u.device[0]}]
        elif op == "MemberAdded":
            m = self.user()
            rec.update({"TeamName": team, "TeamGuid": team_guid, "AADGroupId": group_id,
                        "CommunicationType": "Team",
                        "Members": [{"DisplayName": m.display_name, "Role": 1, "UPN": m.upn}]})
        else:
            rec.update({"ChatThreadId": f"19:{self.w.hex(32)}@unq.gbl.spaces", "CommunicationType": "OneOnOne"})
            if op == "MessageSent":
                rec["MessageId"] = str(self.rint(10**12, 10**13))
        return rec

    def bg_powerbi(self, t: datetime) -> Record:
        u = self.user()
        op = self.pick(("ViewReport", "ViewReport", "ViewDashboard", "ExportReport"))
        report = self.pick(("Sales pipeline", "Headcount", "Cash flow", "Support SLA"))
        rec = self.base(t, 20, op, "PowerBI", user_id=self.user_id(u), user_key=u.puid, user_type=0,
                        object_id=report, client_ip=self.plain_ip(u), result=None)
        rec.update({
            "Activity": op, "ItemName": report, "WorkSpaceName": self.pick(("Finance", "Ops")),
            "ReportName": report, "WorkspaceId": self.w.guid(), "ReportId": self.w.guid(),
            "DatasetId": self.w.guid(), "ReportType": "PowerBIReport", "DistributionMethod": "Workspace",
            "UserAgent": u.user_agent, "RequestId": self.w.guid(), "ActivityId": self.w.guid(), "IsSuccess": True,
        })
        if op == "ExportReport":
            rec["ExportEventStartDateTimeUTC"] = creation_time(t) + "Z"
            rec["ExportedArtifactInfo"] = {"ExportType": "Pdf", "ArtifactType": "Report", "ArtifactId": 1}
        return rec

    def bg_copilot(self, t: datetime) -> Record:
        u = self.user()
        host = self.pick(("Word", "Outlook", "Teams", "Excel", "Bing"))
        site = self.pick(self.w.sites)
        _, name, ext, url = self.file_ref(site)
        rec = self.base(t, 261, "CopilotInteraction", "Copilot", user_id=self.user_id(u), user_key=u.object_id,
                        user_type=0, object_id=None, client_ip=self.plain_ip(u), result=None)
        prompt_id = str(self.rint(10**12, 10**13))
        rec["ClientRegion"] = "US"
        rec["CopilotEventData"] = {
            "AISystemPlugin": [],
            "AccessedResources": [{"Id": url, "Name": name, "Type": ext, "Action": "Read"}],
            "AppHost": host,
            "Contexts": [{"Id": url, "Type": ext}],
            "MessageIds": [],
            "Messages": [{"Id": prompt_id, "isPrompt": True}, {"Id": str(int(prompt_id) + 700), "isPrompt": False}],
            "ModelTransparencyDetails": [],
            "ThreadId": f"19:{self.w.hex(32)}@thread.v2",
        }
        return rec

    def bg_alert(self, t: datetime) -> Record:
        u = self.user()
        name, category, op_name = self.pick((
            ("Elevation of Exchange admin privilege", "AccessGovernance", "GrantAdminPermission"),
            ("Creation of forwarding/redirect rule", "ThreatManagement", "New-InboxRule"),
            ("Unusual external user file activity", "DataGovernance", "FileAccessed"),
        ))
        operation = self.pick(("AlertTriggered", "AlertEntityGenerated"))
        alert_id = self.w.guid()
        rec = self.base(t, 40, operation, "SecurityComplianceCenter", user_id="SecurityComplianceAlerts",
                        user_key="SecurityComplianceAlerts", user_type=4,
                        object_id=alert_id if operation == "AlertTriggered" else u.upn, client_ip=None)
        data = {"etype": "User", "eid": u.upn, "tid": self.tid, "ts": t.strftime("%Y-%m-%dT%H:%M:%S.0000000Z"),
                "op": op_name, "tdc": "1", "suid": u.upn, "ut": "Regular"}
        rec.update({
            "AlertId": alert_id, "AlertType": "System", "Name": name, "PolicyId": self.w.guid(), "Status": "Active",
            "Severity": self.pick(("Low", "Medium", "High")), "Category": category,
            "Source": "Office 365 Security & Compliance", "Comments": "New alert",
            "Data": orjson.dumps(data).decode(), "AlertEntityId": u.upn, "EntityType": "User",
        })
        return rec

    # ------------------------------------------------------------- DLP (11, 13)

    def policy_details(self, *, include_values: bool) -> list[dict[str, Any]]:
        """PolicyDetails with one rule and its matched sensitive information."""
        sit_id, sit_name = self.pick(_SIT)
        count = self.rint(1, 30)
        sensitive: dict[str, Any] = {
            "Confidence": self.pick((75, 85, 95)), "Count": count, "Location": "Document",
            "SensitiveType": sit_id, "SensitiveInformationTypeName": sit_name, "UniqueCount": max(1, count // 2),
        }
        if include_values:
            sensitive["SensitiveInformationDetections"] = {
                "DetectedValues": [{"Name": sit_name, "Value": f"XXXX-XXXX-XXXX-{self.rint(10**4):04d}"}],
                "ResultsTruncated": False,
            }
        high = count >= 10
        return [{
            "PolicyId": self.w.guid(), "PolicyName": "U.S. Financial Data",
            "Rules": [{
                "RuleId": self.w.guid(),
                "RuleName": ("High" if high else "Low") + " volume of content detected U.S. Financial",
                "Actions": ["BlockAccess", "NotifyUser", "GenerateIncidentReport"] if high else ["NotifyUser"],
                "OverriddenActions": [], "Severity": "High" if high else "Low", "RuleMode": "Enable",
                "ConditionsMatched": {"SensitiveInformation": [sensitive], "DocumentProperties": [],
                                      "OtherConditions": [{"Name": "AccessScope", "Value": "NotInOrganization"}]},
            }],
        }]

    def bg_dlp_sharepoint(self, t: datetime) -> Record:
        u = self.user()
        site = self.pick_site(u)
        _, name, _, url = self.file_ref(site)
        onedrive = site.owner is not None
        agent = "DlpPolicyEventBasedAssistantOneDriveForBusiness" if onedrive else "DlpAgent"
        item_id = self.w.guid()
        rec = self.base(t, 11, "DLPRuleMatch" if onedrive else "DlpRuleMatch", "OneDrive" if onedrive else "SharePoint",
                        user_id=agent, user_key=agent, user_type=4, object_id=item_id, client_ip=None, result=None)
        include = self.rng.random() < 0.3
        rec["IncidentId"] = self.w.guid()
        rec["PolicyDetails"] = self.policy_details(include_values=include)
        rec["SensitiveInfoDetectionIsIncluded"] = include
        rec["SharePointMetaData"] = {
            "From": u.upn.upper() if self.rng.random() < 0.3 else u.upn, "itemCreationTime": creation_time(t),
            "SiteCollectionGuid": site.site_id, "SiteCollectionUrl": site.url, "FileName": name,
            "FileOwner": (site.owner or u).display_name, "FilePathUrl": url, "DocumentLastModifier": u.upn,
            "UniqueId": item_id, "LastModifiedTime": creation_time(t), "IsViewableByExternalUsers": False,
        }
        return rec

    def bg_dlp_exchange(self, t: datetime) -> Record:
        u = self.user()
        msg = self.message_id()
        rec = self.base(t, 13, "DlpRuleMatch", "Exchange", user_id="DlpAgent", user_key="DlpAgent", user_type=4,
                        object_id=msg, client_ip=None, result=None)
        include = self.rng.random() < 0.3
        to = [self.user().upn] if self.rng.random() < 0.6 else [f"someone{self.rint(99)}@partner.example"]
        rec["IncidentId"] = self.w.guid()
        rec["PolicyDetails"] = self.policy_details(include_values=include)
        rec["SensitiveInfoDetectionIsIncluded"] = include
        rec["ExchangeMetaData"] = {
            "BCC": [], "CC": [], "From": u.upn, "MessageID": msg, "RecipientCount": len(to),
            "Sent": creation_time(t), "Subject": self.pick(_SUBJECTS), "To": to, "UniqueID": self.w.guid(),
        }
        return rec

    def dlp_undo(self, match: Record, t: datetime) -> Record:
        """The DlpRuleUndo of *match*: same Id and RecordType, a distinct record (override or false positive)."""
        rec: Record = {
            "CreationTime": creation_time(t), "Id": match["Id"], "Operation": "DlpRuleUndo",
            "OrganizationId": self.tid, "RecordType": match["RecordType"], "UserKey": match["UserKey"],
            "UserType": match["UserType"], "Version": 1, "Workload": match["Workload"],
            "ObjectId": match["ObjectId"], "UserId": match["UserId"], "IncidentId": match.get("IncidentId"),
            "PolicyDetails": match["PolicyDetails"], "SensitiveInfoDetectionIsIncluded": False,
            "ExceptionInfo": orjson.dumps({"Reason": "Override", "FalsePositive": self.rng.random() < 0.5,
                                           "Justification": "Business justification", "Rules": []}).decode(),
        }
        for meta in ("SharePointMetaData", "ExchangeMetaData"):
            if meta in match:
                rec[meta] = match[meta]
        return rec
