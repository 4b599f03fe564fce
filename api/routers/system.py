"""/healthz and /metrics (Prometheus text format), outside /api/v1."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.orm import Session

from xfrmctl.port import ChildSaInfo, DaemonStatus, IkeSaInfo
from xfrmctl.store import fleet

from ..deps import ReadDep, ServicesDep

router = APIRouter(tags=["system"])


class Health(BaseModel):
    status: str
    database: bool
    daemon: bool


def _ping(session: Session) -> bool:
    return session.execute(text("SELECT 1")).scalar() == 1


@router.get("/healthz", response_model=Health)
async def healthz(services: ServicesDep, response: Response) -> Health:
    """Liveness without a token: database reachable, daemon attached."""
    try:
        database = await services.db.run(_ping)
    except Exception:
        database = False
    if not database:
        response.status_code = 503
    return Health(status="ok" if database else "degraded", database=database,
                  daemon=services.controller is not None)


class _Snapshot(Collector):
    """Metric families built from one read of the daemon's state."""

    def __init__(self, status: DaemonStatus | None, ike: Iterable[IkeSaInfo],
                 children: Iterable[ChildSaInfo],
                 gateways: Iterable[fleet.GatewayState] = ()) -> None:
        self.status, self.ike, self.children = status, list(ike), list(children)
        self.gateways = list(gateways)

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("xfrmctl_daemon_up", "1 if the daemon is attached to the API")
        up.add_metric([], 1.0 if self.status is not None else 0.0)
        yield up
        yield _by_state("xfrmctl_ike_sas", "IKE_SAs by state", self.ike)
        yield _by_state("xfrmctl_child_sas", "CHILD_SAs by state", self.children)
        if self.status is not None:
            yield from _counters(self.status)
        yield from _traffic(self.children)
        yield from _fleet(self.gateways)


def _fleet(gateways: Iterable[fleet.GatewayState]) -> Iterable[Metric]:
    """Every gateway on the database, labelled by name: reachable, heartbeat age, SAs."""
    now = datetime.now(UTC)
    up = GaugeMetricFamily("xfrmctl_gateway_up", "1 if the gateway's heartbeat is recent",
                           labels=["gateway"])
    age = GaugeMetricFamily("xfrmctl_gateway_heartbeat_age_seconds",
                            "seconds since the gateway's last heartbeat", labels=["gateway"])
    ike = GaugeMetricFamily("xfrmctl_gateway_ike_sas", "IKE_SAs the gateway recorded",
                            labels=["gateway"])
    child = GaugeMetricFamily("xfrmctl_gateway_child_sas", "CHILD_SAs the gateway recorded",
                              labels=["gateway"])
    for g in gateways:
        up.add_metric([g.name], 1.0 if g.reachable else 0.0)
        age.add_metric([g.name], (now - g.heartbeat_at).total_seconds())
        ike.add_metric([g.name], g.ike_sas)
        child.add_metric([g.name], g.child_sas)
    yield from (up, age, ike, child)


def _by_state(name: str, doc: str, sas: Iterable[IkeSaInfo | ChildSaInfo]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=["state"])
    for state, count in sorted(Counter(sa.state for sa in sas).items()):
        family.add_metric([state], count)
    return family


def _counters(status: DaemonStatus) -> Iterable[Metric]:
    c = status.counters
    for name, doc, value in (
            ("xfrmctl_ike_sa_setups", "IKE_SAs established", c.ike_setups),
            ("xfrmctl_child_sa_setups", "CHILD_SAs established", c.child_setups),
            ("xfrmctl_rekeys", "rekeys completed", c.rekeys)):
        family = CounterMetricFamily(name, doc)
        family.add_metric([], value)
        yield family
    failures = CounterMetricFamily("xfrmctl_failures", "failed setups by reason",
                                   labels=["reason"])
    for reason, count in sorted(c.failures.items()):
        failures.add_metric([reason], count)
    yield failures
    latency = SummaryMetricFamily("xfrmctl_kernel_install_seconds",
                                  "time to install a CHILD_SA in the kernel")
    latency.add_metric([], count_value=c.kernel_installs, sum_value=c.kernel_install_seconds)
    yield latency
    states = GaugeMetricFamily("xfrmctl_connections", "configured connections by state",
                               labels=["state"])
    for state, count in sorted(Counter(s.state.value for s in status.connections).items()):
        states.add_metric([state], count)
    yield states


def _traffic(children: Iterable[ChildSaInfo]) -> Iterable[Metric]:
    octets = CounterMetricFamily("xfrmctl_child_sa_bytes", "bytes through a CHILD_SA",
                                 labels=["child_sa", "name", "direction"])
    packets = CounterMetricFamily("xfrmctl_child_sa_packets", "packets through a CHILD_SA",
                                  labels=["child_sa", "name", "direction"])
    for sa in children:
        t = sa.traffic
        octets.add_metric([sa.id, sa.name, "in"], t.bytes_in)
        octets.add_metric([sa.id, sa.name, "out"], t.bytes_out)
        packets.add_metric([sa.id, sa.name, "in"], t.packets_in)
        packets.add_metric([sa.id, sa.name, "out"], t.packets_out)
    yield octets
    yield packets


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(services: ServicesDep, _: ReadDep) -> Response:
    """Prometheus metrics (needs a read token; scrape with `authorization: bearer`)."""
    controller = services.controller
    gateways = await services.db.run(fleet.list_gateways)
    if controller is None:
        snapshot = _Snapshot(None, [], [], gateways)
    else:
        snapshot = _Snapshot(await controller.status(), await controller.list_ike_sas(),
                             await controller.list_child_sas(), gateways)
    registry = CollectorRegistry()
    registry.register(snapshot)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
