"""The scripted incident of the default scenario: facts for tests and the records that show it.

Timeline (minutes after ``start``): password spray (0-18), the victim's successful sign-in
from the spray address (21), mailbox reads from that session (26-44), a forwarding inbox
rule (48, redirect added at 50), mailbox auditing switched off (53), a new secret on an
enterprise application (70), that application reading mailboxes from a new address
(95-130), a licence auto-claimed through the Signup service principal (180) and one
assigned in the admin centre with empty ModifiedProperties and no ObjectId (240).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from auditlake.emulator.synth import (
    APP_AAD_POWERSHELL,
    APP_OFFICE,
    APP_SIGNUP,
    Record,
    RecordFactory,
    modified,
    name_values,
)
from function_app.core.model import iso_z

RecordKey = tuple[str, int, str]

_ATTACKER_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) " \
               "Chrome/122.0.0.0 Safari/537.36"


@dataclass(frozen=True, slots=True)
class Incident:
    """The concrete values of the scripted incident of one tenant."""

    tenant_id: str
    attacker_ip: str
    victim_upn: str
    victim_object_id: str
    sprayed_upns: tuple[str, ...]
    spray_error_code: str
    session_id: str
    accessed_message_ids: tuple[str, ...]
    inbox_rule_name: str
    forward_to: str
    signup_sp_app_id: str
    signup_sp_object_id: str
    license_signup_target_upn: str
    license_admin_target_upn: str
    license_admin_upn: str
    sp_display_name: str
    sp_app_id: str
    sp_object_id: str
    sp_ip: str
    sp_accessed_mailboxes: tuple[str, ...]
    start: datetime
    spray_start: datetime
    spray_end: datetime
    victim_login_time: datetime
    mail_access_time: datetime
    inbox_rule_time: datetime
    audit_disabled_time: datetime
    sp_credential_time: datetime
    sp_access_time: datetime
    license_signup_time: datetime
    license_admin_time: datetime
    end: datetime
    record_keys: tuple[RecordKey, ...]

    def to_json(self) -> dict[str, Any]:
        """The facts as JSON-ready values: datetimes as ISO 8601 ``Z``, tuples as lists."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, datetime):
                out[f.name] = iso_z(value)
            elif isinstance(value, tuple):
                out[f.name] = [list(v) if isinstance(v, tuple) else v for v in value]
            else:
                out[f.name] = value
        return out


def record_key(rec: Record) -> RecordKey:
    """The identity of a record: (Id, RecordType as int, Operation)."""
    return (str(rec["Id"]), int(rec["RecordType"]), str(rec["Operation"]))


def script_incident(f: RecordFactory, start: datetime) -> tuple[Incident, list[tuple[str, datetime, Record]]]:
    """Write the incident starting at *start*; return its facts and ``(content_type, time, record)`` triples."""
    w, rng = f.w, f.rng
    out: list[tuple[str, datetime, Record]] = []

    def at(minutes: float) -> datetime:
        return start + timedelta(minutes=minutes)

    def emit(content_type: str, t: datetime, rec: Record) -> None:
        out.append((content_type, t, rec))

    victim = rng.choice(w.admins)
    others = [u for u in w.users if u is not victim]
    license_admin = next((a for a in w.admins if a is not victim), victim)
    sprayed = [*rng.sample(others, min(len(others), 15)), victim]
    rng.shuffle(sprayed)
    attacker_ip = f"185.220.{rng.randrange(100, 103)}.{rng.randrange(2, 250)}"
    sp_ip = f"20.{rng.randrange(40, 120)}.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}"
    session_id = w.guid()

    # Password spray: one or two tries per account, ROPC from a script.
    spray_times: list[datetime] = []
    for i, u in enumerate(sprayed):
        for attempt in range(1 + (i % 3 == 0)):
            t = at(i * 18 / len(sprayed) + attempt * 0.3)
            spray_times.append(t)
            emit("Audit.AzureActiveDirectory", t, f.sts_logon(
                t, u, ok=False, ip=attacker_ip, app_id=APP_AAD_POWERSHELL, user_agent="BAV2ROPC",
                error=("50126", "InvalidUserNameOrPassword"), request_type="OAuth2:Token",
            ))
    login_t = at(21)
    emit("Audit.AzureActiveDirectory", login_t, f.sts_logon(
        login_t, victim, ok=True, ip=attacker_ip, app_id=APP_OFFICE, user_agent=_ATTACKER_UA,
        request_type="OAuth2:Authorize", session_id=session_id,
    ))

    # Mail read from the hijacked session: three binds then a folder sync.
    message_ids: list[str] = []
    for n, minute in enumerate((26, 31, 37)):
        ids = [f.message_id() for _ in range(2 + n)]
        message_ids.extend(ids)
        t = at(minute)
        emit("Audit.Exchange", t, f.mail_items_accessed(
            t, victim, access="Bind", ip=attacker_ip, client_ip=attacker_ip, session_id=session_id,
            client_info=f"Client=OWA;Action=ViaProxy;{_ATTACKER_UA};", message_ids=ids,
        ))
    t = at(44)
    emit("Audit.Exchange", t, f.mail_items_accessed(
        t, victim, access="Sync", ip=attacker_ip, client_ip=f"{attacker_ip}:{rng.randrange(30000, 60000)}",
        session_id=session_id, client_info=f"Client=OWA;Action=ViaProxy;{_ATTACKER_UA};",
    ))

    # Persistence in the mailbox: forward, then redirect, then blind the audit.
    rule = rng.choice(("..", "RSS Feeds", "Archive sync"))
    local = victim.upn.split("@")[0].split(".")[0]
    forward_to = f"{local}.{w.hex(4)}@securemail-archive.example"
    rule_t = at(48)
    emit("Audit.Exchange", rule_t, f.exchange_admin(
        rule_t, "New-InboxRule",
        name_values((
            ("Name", rule), ("SubjectOrBodyContainsWords", "invoice;payment;wire;bank"), ("ForwardTo", forward_to),
            ("MarkAsRead", "True"), ("MoveToFolder", "RSS Subscriptions"), ("StopProcessingRules", "True"),
        )),
        actor=victim, object_id=f"{victim.upn}\\{rule}", client_ip=f"{attacker_ip}:{rng.randrange(30000, 60000)}",
    ))
    t = at(50)
    emit("Audit.Exchange", t, f.exchange_admin(
        t, "Set-InboxRule", name_values((("Identity", f"{victim.upn}\\{rule}"), ("RedirectTo", forward_to))),
        actor=victim, object_id=f"{victim.upn}\\{rule}", client_ip=f"[{attacker_ip}]:{rng.randrange(30000, 60000)}",
    ))
    audit_t = at(53)
    emit("Audit.Exchange", audit_t, f.exchange_admin(
        audit_t, "Set-Mailbox", name_values((("Identity", victim.upn), ("AuditEnabled", "False"))),
        actor=victim, object_id=victim.upn, client_ip=f"[::ffff:{attacker_ip}]:{rng.randrange(30000, 60000)}",
    ))

    # A new secret on an enterprise app, then the app reading mail from elsewhere.
    sp = rng.choice(w.apps)
    cred_t = at(70)
    emit("Audit.AzureActiveDirectory", cred_t, f.sp_credentials(cred_t, victim, sp, attacker_ip))
    targets = rng.sample(others, min(3, len(others)))
    for n, owner in enumerate(targets):
        t = at(95 + 15 * n)
        emit("Audit.Exchange", t, f.mail_items_accessed(
            t, owner, owner=owner, access="Bind", ip=sp_ip, client_ip=sp_ip, app_id=sp.app_id, app_only=True,
            client_info="Client=REST;Client=RESTSystem;;",
        ))

    # Licences: auto-claimed through the Signup principal, and one from the admin centre.
    signup = next(s for s in w.system_sps if s.app_id == APP_SIGNUP)
    signup_target = rng.choice([u for u in others if u not in targets])
    lic_t = at(180)
    sku = ("FLOW_FREE", "f30db892-07e9-47e9-837c-80727f46fd3d")
    emit("Audit.AzureActiveDirectory", lic_t, f.directory(
        lic_t, "Change user license.", actor=signup, target=f.user_target(signup_target),
        object_id=signup_target.upn, props=f.license_props(lic_t, sku, plans=False), ip=None,
    ))
    t = lic_t + timedelta(seconds=2)
    emit("Audit.AzureActiveDirectory", t, f.directory(
        t, "Update user.", actor=signup, target=f.user_target(signup_target), object_id=signup_target.upn,
        props=f.license_props(t, sku, plans=True), ip=None,
    ))
    admin_target = rng.choice([u for u in others if u is not signup_target and u is not license_admin])
    admin_lic_t = at(240)
    # As the admin centre writes it: no ModifiedProperties and no ObjectId; only Target[] names the user.
    emit("Audit.AzureActiveDirectory", admin_lic_t, f.directory(
        admin_lic_t, "Change user license.", actor=license_admin, target=f.user_target(admin_target),
        object_id=None, props=modified([]), ip=f.plain_ip(license_admin),
    ))

    incident = Incident(
        tenant_id=w.tenant_id,
        attacker_ip=attacker_ip,
        victim_upn=victim.upn,
        victim_object_id=victim.object_id,
        sprayed_upns=tuple(u.upn for u in sprayed),
        spray_error_code="50126",
        session_id=session_id,
        accessed_message_ids=tuple(message_ids),
        inbox_rule_name=rule,
        forward_to=forward_to,
        signup_sp_app_id=APP_SIGNUP,
        signup_sp_object_id=signup.object_id,
        license_signup_target_upn=signup_target.upn,
        license_admin_target_upn=admin_target.upn,
        license_admin_upn=license_admin.upn,
        sp_display_name=sp.display_name,
        sp_app_id=sp.app_id,
        sp_object_id=sp.object_id,
        sp_ip=sp_ip,
        sp_accessed_mailboxes=tuple(u.upn for u in targets),
        start=start,
        spray_start=min(spray_times),
        spray_end=max(spray_times),
        victim_login_time=login_t,
        mail_access_time=at(26),
        inbox_rule_time=rule_t,
        audit_disabled_time=audit_t,
        sp_credential_time=cred_t,
        sp_access_time=at(95),
        license_signup_time=lic_t,
        license_admin_time=admin_lic_t,
        end=admin_lic_t,
        record_keys=tuple(record_key(r) for _, _, r in out),
    )
    return incident, out
