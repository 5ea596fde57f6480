"""What a run costs: the estimate shown before provisioning, and the ledger of what it has cost so far.

Prices come from the inventory (``price_per_hour``, ``currency`` per host). A host is billed from
``acquired_at`` to ``released_at`` (or ``now`` while it is still held), the way pay-per-use clouds bill
compute time. Hosts without a price cost nothing in the sums but are listed as ``unpriced`` so a table
never claims a total it does not know. Sums are kept per currency: fedctl never converts money.

A batch allocation (``provider: slurm``) is billed once, per node, not per host: its hosts are slots
of one job (the server's shares the first node), so they become one row, ``job 12``, holding as many
nodes as the hosts were placed on, from the first host's ``acquired_at`` to the release. Its
node-hours (nodes x hours) are always counted; it has a price only when the inventory gives
``slurm.price_per_node_hour`` and/or ``slurm.price_per_gpu_hour`` (in the hosts' ``currency``:
service units where the cluster charges those), else it is ``unpriced`` like a host without one.
This module is the one place a run's cost is computed: ``cost``, ``watch``, the budget guards, the
watchdog's spec and the results all read ``run_cost``.

Pure functions over the state and a clock: the ledger arithmetic is tested with an injected ``now``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from fedctl.contract import MetricsLog, read_metrics
from fedctl.state import RunState

#: the guess for one round's wall time before any round was measured (seconds). A round of the
#: fedavg_tf payload on CPU hosts (a small Keras model, a few hundred examples per client, one local
#: epoch, upload + aggregation) takes 10-60 s; 60 s errs on the expensive side.
DEFAULT_SECONDS_PER_ROUND = 60.0
#: the guess for provisioning + starting + collecting results, on top of the rounds (seconds)
DEFAULT_OVERHEAD_S = 180.0


# -- helpers shared by the estimate and the ledger ------------------------------------------------
@dataclass(frozen=True)
class PricedHost:
    """One host as far as money is concerned."""

    name: str
    price_per_hour: float | None
    currency: str = "USD"
    role: str = ""


#: providers whose hosts are slots of one batch allocation, billed per node of it (not per host)
ALLOCATION_PROVIDERS = ("slurm",)
ALLOCATION_ROLE = "allocation"


@dataclass(frozen=True)
class AllocationGroup:
    """The hosts of one batch allocation, billed together: ``nodes`` nodes at ``price_per_hour``
    (nodes x price per node-hour + GPUs x price per GPU-hour; None: no price given)."""

    name: str  # ``job 12`` (``allocation`` before the job id is known)
    members: tuple[Any, ...]  # the HostRecords / PlannedHosts
    nodes: int
    gpus: int  # GPUs of the allocation (the client nodes' gpus_per_node; a server's own node has none)
    price_per_hour: float | None
    currency: str


def _info(h: Any) -> Any:
    return getattr(h, "info", None) or h.host  # HostRecord (a state's) or PlannedHost (a plan's)


def in_allocation(h: Any) -> bool:
    """Whether a host (record or planned) is a slot of a batch allocation (billed per node)."""
    return getattr(_info(h).provider_settings, "provider", None) in ALLOCATION_PROVIDERS


def allocation_groups(hosts: Sequence[Any], held: bool = False) -> list[AllocationGroup]:
    """The batch allocations among ``hosts`` (a state's records or a plan's hosts), one per job id.

    Nodes: the distinct nodes the hosts were placed on; before placement (a plan, a pending job)
    the nodes the client hosts will take (the server's step shares the first), at most the
    section's ``nodes`` -- unless ``held`` (the ledger): a job that never ran held no node. Prices: ``price_per_node_hour`` / ``price_per_gpu_hour`` of the section
    (read with getattr: older settings lack them)."""
    by_job: dict[str, list[Any]] = {}
    for h in hosts:
        if in_allocation(h):
            machine = _info(h).machine
            job = machine.id if machine is not None and machine.id else ""
            by_job.setdefault(job, []).append(h)
    out = []
    for job, members in sorted(by_job.items()):
        st = _info(members[0]).provider_settings

        def placed(hs: Sequence[Any]) -> set[str]:
            return {_info(h).address for h in hs if _info(h).address and not _info(h).address.startswith("(")}

        clients = [h for h in members if h.role != "server"]
        if placed(members) or held:
            nodes, gpu_nodes = len(placed(members)), len(placed(clients))
        else:  # not placed yet: the nodes the client hosts will take, plus the server's own if it has one
            gpu_nodes = max(1, min(int(getattr(st, "nodes", 1) or 1), len(clients) or 1))
            nodes = gpu_nodes + (1 if getattr(st, "server", "shared") == "own" else 0)
        gpus = int(getattr(st, "gpus_per_node", None) or 0)
        per_node = getattr(st, "price_per_node_hour", None)
        per_gpu = getattr(st, "price_per_gpu_hour", None)
        price = None
        if per_node is not None or per_gpu is not None:  # the server's own node has no GPUs
            price = nodes * float(per_node or 0.0) + gpu_nodes * gpus * float(per_gpu or 0.0)
        out.append(AllocationGroup(f"job {job}" if job else ALLOCATION_ROLE, tuple(members), nodes,
                                   gpu_nodes * gpus, price, _info(members[0]).currency or "USD"))
    return out


def _priced_hosts(plan_or_state: Any) -> list[PricedHost]:
    """Hosts of a RunState or a Plan, with the role the plan gives them; a batch allocation's hosts
    as one row per allocation (``allocation_groups``)."""
    out = []
    for h in plan_or_state.hosts:
        if in_allocation(h):
            continue
        info = _info(h)
        price = info.price_per_hour
        out.append(PricedHost(info.name, None if price is None else float(price), info.currency or "USD", h.role))
    for g in allocation_groups(plan_or_state.hosts):
        out.append(PricedHost(g.name, g.price_per_hour, g.currency, ALLOCATION_ROLE))
    return out


def priced_currencies(plan_or_state: Any) -> list[str]:
    """The currencies the priced hosts and allocations of a state or plan are in."""
    return sorted({h.currency for h in _priced_hosts(plan_or_state) if h.price_per_hour is not None})


def _add(sums: dict[str, float], currency: str, amount: float) -> None:
    sums[currency] = sums.get(currency, 0.0) + amount


def format_money(amount: float | None, currency: str, none: str = "unpriced") -> str:
    """``1.2345, "USD" -> "1.23 USD"``; small amounts keep more digits so they do not show as 0.00.
    ``none``: what an unknown amount reads as (the dashboard shows ``-``). fedctl's one money format."""
    if amount is None:
        return none
    digits = 2 if abs(amount) >= 1 or amount == 0 else 4
    return f"{amount:.{digits}f} {currency}"


def format_totals(totals: Mapping[str, float]) -> str:
    """``{"USD": 1.5, "EUR": 2} -> "1.50 USD + 2.00 EUR"`` (``-`` when nothing is priced)."""
    return " + ".join(format_money(v, c) for c, v in sorted(totals.items())) or "-"


# -- estimate ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EstimateRow:
    name: str
    role: str
    price_per_hour: float | None
    currency: str
    cost: float | None  # for the whole estimated run


@dataclass(frozen=True)
class CostEstimate:
    """What the whole run will cost if every host is held for the estimated duration.

    ``measured`` is False while ``seconds_per_round`` is the documented default guess
    (``DEFAULT_SECONDS_PER_ROUND``); ``updated_from_metrics`` replaces it with the measured mean.
    """

    rows: tuple[EstimateRow, ...]
    rounds: int
    seconds_per_round: float
    measured: bool
    overhead_s: float = DEFAULT_OVERHEAD_S
    rounds_done: int = 0
    elapsed_s: float = 0.0  # wall time already spent on the rounds done (measured runs only)

    @property
    def hours(self) -> float:
        """Estimated hours the hosts are held for the whole run."""
        remaining = max(0, self.rounds - self.rounds_done) * self.seconds_per_round
        return (self.overhead_s + self.elapsed_s + remaining) / 3600.0

    @property
    def per_hour(self) -> dict[str, float]:
        """Price of the whole fleet per hour, by currency."""
        sums: dict[str, float] = {}
        for r in self.rows:
            if r.price_per_hour is not None:
                _add(sums, r.currency, r.price_per_hour)
        return sums

    @property
    def total(self) -> dict[str, float]:
        """Estimated cost of the whole run, by currency."""
        return {c: v * self.hours for c, v in self.per_hour.items()}

    @property
    def unpriced(self) -> list[str]:
        return [r.name for r in self.rows if r.price_per_hour is None]

    def updated_from_metrics(self, metrics: "MetricsLog | str | Path") -> "CostEstimate":
        """A new estimate whose round time is measured from metrics.jsonl (a path, or the contract's
        ``MetricsLog`` already read): the rounds' ``start``/``end``.

        The mean round time is taken over completed rounds, each counted once however often a resume
        repeated it (first start to last end divided by the number of rounds, so gaps between rounds
        count too). Without a completed round the estimate is returned unchanged.
        """
        log = metrics if isinstance(metrics, MetricsLog) else read_metrics(str(metrics))
        times = log.round_times()
        if not times:
            return self
        first = min(s for s, _ in times)
        last = max(e for _, e in times)
        spr = max(0.0, last - first) / len(times)
        rows = tuple(
            EstimateRow(r.name, r.role, r.price_per_hour, r.currency, None) for r in self.rows
        )
        new = CostEstimate(rows, self.rounds, spr, True, self.overhead_s, len(times), max(0.0, last - first))
        return new._with_costs(rows)

    def _with_costs(self, rows: Sequence[EstimateRow]) -> "CostEstimate":
        hours = self.hours
        priced = tuple(
            EstimateRow(r.name, r.role, r.price_per_hour, r.currency,
                        None if r.price_per_hour is None else r.price_per_hour * hours)
            for r in rows
        )
        return CostEstimate(priced, self.rounds, self.seconds_per_round, self.measured, self.overhead_s,
                            self.rounds_done, self.elapsed_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hosts": [asdict(r) for r in self.rows],
            "rounds": self.rounds,
            "rounds_done": self.rounds_done,
            "seconds_per_round": self.seconds_per_round,
            "measured": self.measured,
            "overhead_s": self.overhead_s,
            "hours": self.hours,
            "per_hour": self.per_hour,
            "total": self.total,
            "unpriced": self.unpriced,
        }


def estimate(
    plan_or_state: Any,
    rounds: int,
    seconds_per_round: float | None = None,
    overhead_s: float = DEFAULT_OVERHEAD_S,
) -> CostEstimate:
    """Estimate the cost of a whole run on the hosts of ``plan_or_state``.

    ``plan_or_state``: a RunState, a Plan (or its ``to_dict()``), or a list of HostInfo/HostRecord.
    ``seconds_per_round`` None means no round was measured yet: ``DEFAULT_SECONDS_PER_ROUND`` is used
    and the estimate says ``measured=False``. Hours = (overhead_s + rounds * seconds_per_round) / 3600.
    """
    hosts = _priced_hosts(plan_or_state)
    measured = seconds_per_round is not None
    spr = float(seconds_per_round) if seconds_per_round is not None else DEFAULT_SECONDS_PER_ROUND
    rows = tuple(EstimateRow(h.name, h.role, h.price_per_hour, h.currency, None) for h in hosts)
    return CostEstimate(rows, int(rounds), spr, measured, overhead_s)._with_costs(rows)


# -- ledger -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HostCost:
    """What one host has cost so far."""

    name: str
    role: str
    price_per_hour: float | None
    currency: str
    acquired_at: float | None
    released_at: float | None
    hours: float
    cost: float | None  # None when the host has no price
    running: bool  # still held (billing)
    nodes: int | None = None  # a batch allocation's row: how many nodes it holds (None: a host)
    node_hours: float | None = None  # nodes x hours (a batch allocation's row only)
    gpu_hours: float | None = None  # GPUs x hours (an allocation with GPUs only)


@dataclass(frozen=True)
class RunCost:
    """The ledger at ``now``: per-host rows and totals by currency (``watch`` and ``cost`` print it)."""

    run_id: str
    now: float
    rows: tuple[HostCost, ...]
    total: dict[str, float] = field(default_factory=dict)
    per_hour: dict[str, float] = field(default_factory=dict)  # what the hosts still held cost per hour

    @property
    def currencies(self) -> list[str]:
        return sorted({r.currency for r in self.rows if r.price_per_hour is not None})

    @property
    def unpriced(self) -> list[str]:
        return [r.name for r in self.rows if r.price_per_hour is None]

    @property
    def node_hours(self) -> float | None:
        """The batch allocations' node-hours (None: the run has no batch allocation)."""
        counted = [r.node_hours for r in self.rows if r.node_hours is not None]
        return sum(counted) if counted else None

    @property
    def unpriced_allocations(self) -> list[str]:
        """Batch allocations without a price (their node-hours are counted, their money is not)."""
        return [r.name for r in self.rows if r.nodes is not None and r.price_per_hour is None]

    @property
    def hours(self) -> float:
        """Wall time from the first acquisition to now or the last release."""
        starts = [r.acquired_at for r in self.rows if r.acquired_at is not None]
        if not starts:
            return 0.0
        ends = [self.now if r.running else (r.released_at or self.now) for r in self.rows if r.acquired_at is not None]
        return max(0.0, max(ends) - min(starts)) / 3600.0

    def total_in(self, currency: str | None = None) -> float:
        """The total in one currency (the only one when None; 0 when nothing is priced)."""
        if currency is None:
            cur = self.currencies
            if len(cur) > 1:
                raise ValueError(f"run {self.run_id} is priced in several currencies: {', '.join(cur)}")
            currency = cur[0] if cur else "USD"
        return self.total.get(currency, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "now": self.now,
            "hours": self.hours,
            "hosts": [asdict(r) for r in self.rows],
            "total": dict(self.total),
            "per_hour": dict(self.per_hour),
            "currencies": self.currencies,
            "unpriced": self.unpriced,
            "node_hours": self.node_hours,
        }


def host_cost(record: Any, now: float) -> HostCost:
    """One HostRecord's cost from ``acquired_at`` to ``released_at`` (or ``now`` while held)."""
    info = record.info
    acquired = record.acquired_at
    released = record.released_at
    hours, running = _held(acquired, released, now)
    price = info.price_per_hour
    return HostCost(
        name=info.name,
        role=record.role,
        price_per_hour=price,
        currency=info.currency or "USD",
        acquired_at=acquired,
        released_at=released,
        hours=hours,
        cost=None if price is None else price * hours,
        running=running,
    )


def _held(acquired: float | None, released: float | None, now: float) -> tuple[float, bool]:
    """(hours held from ``acquired`` to ``released`` or ``now``, still held at ``now``)."""
    if acquired is None:
        return 0.0, False
    end = now if released is None else min(released, now)
    return max(0.0, end - acquired) / 3600.0, acquired <= now and (released is None or released > now)


def allocation_cost(group: AllocationGroup, now: float) -> HostCost:
    """A batch allocation's row: held from its first host's ``acquired_at`` to its last release
    (``now`` while any host is held), ``nodes`` nodes all along."""
    starts = [h.acquired_at for h in group.members if h.acquired_at is not None]
    ends = [h.released_at for h in group.members if h.acquired_at is not None]
    acquired = min(starts) if starts else None
    released = None if not ends or any(e is None for e in ends) else max(e for e in ends if e is not None)
    hours, running = _held(acquired, released, now)
    return HostCost(
        name=group.name, role=ALLOCATION_ROLE, price_per_hour=group.price_per_hour, currency=group.currency,
        acquired_at=acquired, released_at=released, hours=hours,
        cost=None if group.price_per_hour is None else group.price_per_hour * hours, running=running,
        nodes=group.nodes, node_hours=group.nodes * hours,
        gpu_hours=group.gpus * hours if group.gpus else None,
    )


def run_cost(state: RunState, now: float) -> RunCost:
    """What each host (each batch allocation, as one row) and the whole run has cost at ``now``
    (rows, totals by currency). The one place a run's cost is computed."""
    rows = tuple([host_cost(h, now) for h in state.hosts if not in_allocation(h)]
                 + [allocation_cost(g, now) for g in allocation_groups(state.hosts, held=True)])
    total: dict[str, float] = {}
    per_hour: dict[str, float] = {}
    for r in rows:
        if r.cost is not None:
            _add(total, r.currency, r.cost)
        if r.running and r.price_per_hour is not None:
            _add(per_hour, r.currency, r.price_per_hour)
    return RunCost(state.run_id, now, rows, total, per_hour)


def cost_timeline(state: RunState, now: float, points: int = 200) -> tuple[list[float], dict[str, list[float]]]:
    """Times (seconds since the first acquisition) and the run's cumulative cost at each, by currency.

    The cost is piecewise linear between acquisitions and releases; every such instant is included so
    a plot of the result is exact.
    """
    starts = [h.acquired_at for h in state.hosts if h.acquired_at is not None]
    if not starts:
        return [], {}
    t0 = min(starts)
    t1 = max([now] if any(h.released_at is None for h in state.hosts if h.acquired_at is not None)
             else [h.released_at for h in state.hosts if h.released_at is not None] or [now])
    t1 = max(t1, t0)
    instants = {t0, t1}
    for h in state.hosts:
        for t in (h.acquired_at, h.released_at):
            if t is not None and t0 <= t <= t1:
                instants.add(t)
    n = max(2, points)
    instants.update(t0 + (t1 - t0) * i / (n - 1) for i in range(n))
    times = sorted(instants)
    currencies = run_cost(state, t1).currencies
    series: dict[str, list[float]] = {c: [] for c in currencies}
    for t in times:
        rc = run_cost(state, t)
        for cur in currencies:
            series[cur].append(rc.total.get(cur, 0.0))
    return [t - t0 for t in times], series
