"""Multi-tenant fairness for eSurge's scheduler: who may take the next free row, and how a step's
token budget is split between tenants. Plain Python, no JAX.

A request's tenant is the OpenAI `user` field or the name of the API key that sent it (None: the
default tenant). With fair share on, among waiting requests the next admitted comes from the tenant
that runs the fewest sequences (ties: queue order), and the step's prefill budget is split max-min
fairly between tenants with prefill work: every tenant gets what it asks for up to an equal share,
and what one does not use goes to the others. So a burst from one tenant cannot starve another's
requests, and one tenant alone uses the whole budget. An optional cap bounds the sequences one
tenant runs at once.
"""

from __future__ import annotations

from typing import Hashable, Iterable, TypeVar

T = TypeVar("T")


def fair_shares(demands: dict[Hashable, int], budget: int) -> dict[Hashable, int]:
    """Max-min fair split of `budget` between demands (water filling): tenants asking less than
    an equal share get what they ask; the rest split what is left equally. Integer shares; the
    sum never exceeds `budget` nor any share its demand."""
    if budget < 0 or any(d < 0 for d in demands.values()):
        raise ValueError(f"budget and demands must be >= 0, got {budget}, {demands}")
    shares: dict[Hashable, int] = {}
    left = budget
    items = sorted(demands.items(), key=lambda kv: kv[1])
    for i, (tenant, demand) in enumerate(items):
        give = min(demand, left // (len(items) - i))
        shares[tenant] = give
        left -= give
    for tenant, demand in items:  # the remainder of the integer division, in demand order
        extra = min(demand - shares[tenant], left)
        shares[tenant] += extra
        left -= extra
    return shares


def fair_order(items: Iterable[T], tenant_of, running: dict[Hashable, int]) -> list[T]:
    """`items` (in queue order) reordered for admission: repeatedly the next item of the tenant
    with the fewest running sequences, counting those placed earlier in this order; ties go to
    the tenant whose next item comes first in the queue."""
    queues: dict[Hashable, list[tuple[int, T]]] = {}
    for index, item in enumerate(items):
        queues.setdefault(tenant_of(item), []).append((index, item))
    count = {t: running.get(t, 0) for t in queues}
    order = []
    while queues:
        tenant = min(queues, key=lambda t: (count[t], queues[t][0][0]))
        order.append(queues[tenant].pop(0)[1])
        count[tenant] += 1
        if not queues[tenant]:
            del queues[tenant]
    return order
