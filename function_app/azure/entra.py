"""The Entra ID logs polled from Microsoft Graph in Azure: what the entra timer does (``triggers/entra.py``).

For a tenant whose logs cannot stream through an Event Hub (no Event Hub in its subscription,
another tenant's logs), the timer polls the logs ``AUDITLAKE_ENTRA_STREAMS`` names with the same
poller as ``auditlake collect --source entra`` (``entra.poller``): checkpoints and the window ledger
in Table Storage (mirrored to ADX's ``ContentLedger``), records into ADX's ``EntraActivityRaw``,
which the update policies expand into the Sentinel tables. With no logs named it does nothing.

The timer is a singleton (the host's lock), and a checkpoint written by another run meanwhile is a
conflict the poller reports rather than overwrites, so two runs never read a window twice into the
ledger's count. A run fails, after every tenant and log was polled, when any window failed: the
failure shows in Application Insights, and the window is asked again on the next run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from function_app.compose import EntraRouter
from function_app.core.delivery import Runtime
from function_app.entra.poller import EntraPoller, StreamOutcome, poll_tenants, summary_of
from function_app.entra.streams import STREAMS_BY_NAME

log = logging.getLogger(__name__)


async def entra_poll(rt: Runtime, entra: EntraRouter, stream_names: Sequence[str] | None = None
                     ) -> list[StreamOutcome]:
    """Poll every tenant's chosen Entra ID logs once; the outcomes, per tenant and log."""
    names = stream_names if stream_names is not None else rt.settings.entra_streams
    streams = [STREAMS_BY_NAME[n] for n in names]
    if not streams:
        log.info("entra poll: AUDITLAKE_ENTRA_STREAMS names no log; nothing to poll")
        return []
    poller = EntraPoller(entra, rt.state, rt.sink, now=rt.clock)
    outcomes = await poll_tenants(poller, [t.tenant_id for t in rt.settings.tenants], streams)
    total = summary_of(outcomes)
    log.info("entra poll tenants=%d logs=%d windows=%d records=%d inserted=%d late=%d errors=%d",
             len(rt.settings.tenants), len(streams), total["windows"], total["records"], total["inserted"],
             total["late"], len(total["errors"]))
    return outcomes
