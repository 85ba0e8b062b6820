"""Policy decisions: symbi's Rust engine against cedarpy (Cedar) on an equivalent
role-based policy set.

120 policies: 100 permits ("role R may do actions X, Y on resources up to level K") and 20
forbids ("no action X in zone Z before hour H"). symbi carries principal and resource
attributes in the request; Cedar reads the same attributes from a pre-parsed entity set.
Both sides use pre-parsed policy sets. Decisions are compared before timing, so both
provably answer the same questions the same way.
"""

from __future__ import annotations

import json
import random

import pytest

from conftest import size
from symbi.policy import PolicyEngine, PolicyRequest, Principal, Resource

cedarpy = pytest.importorskip("cedarpy", reason="the peer needs `pip install cedarpy`")

N_BATCH = size(20_000, 2_000)
N_SINGLE = size(5_000, 500)
ROLES = [f"role{i}" for i in range(10)]
ACTIONS = [f"act{i}" for i in range(20)]
ZONES = ["eu", "us", "apac"]
USERS = [(f"u{i}", ROLES[i % len(ROLES)]) for i in range(50)]
DOCS = [(f"d{i}", i % 5, ZONES[i % 3]) for i in range(60)]

BATCH_ROW = {
    "metric": "policy decisions/s, batch",
    "unit": "decisions/s",
    "items": N_BATCH,
    "seed_target": ">= 10k decisions/s batch",
    "goal": ">= 10x cedarpy in batch",
}
SINGLE_ROW = {
    "metric": "policy decisions/s, single from Python",
    "unit": "decisions/s",
    "items": N_SINGLE,
    "seed_target": "< 1 ms per decision",
    "goal": "p99 <= 50 us single",
}


def policy_set() -> tuple[list[str], str]:
    rng = random.Random(11)
    symbi_policies, cedar = [], []
    for i in range(100):
        role = rng.choice(ROLES)
        acts = rng.sample(ACTIONS, 2)
        level = rng.randint(0, 4)
        symbi_policies.append(
            f"policy permit{i} {{ allow: [{acts[0]}, {acts[1]}] "
            f'if principal.role == "{role}" && resource.level <= {level} }}'
        )
        cedar.append(
            f'permit(principal, action in [Action::"{acts[0]}", Action::"{acts[1]}"], resource) '
            f'when {{ principal.role == "{role}" && resource.level <= {level} }};'
        )
    for i in range(20):
        act, zone, hour = rng.choice(ACTIONS), rng.choice(ZONES), rng.randint(0, 23)
        symbi_policies.append(
            f"policy forbid{i} {{ deny: {act} "
            f'if resource.zone == "{zone}" && context.hour < {hour} }}'
        )
        cedar.append(
            f'forbid(principal, action == Action::"{act}", resource) '
            f'when {{ resource.zone == "{zone}" && context.hour < {hour} }};'
        )
    return symbi_policies, "\n".join(cedar)


def request_set(n: int) -> tuple[list[PolicyRequest], list[dict]]:
    rng = random.Random(5)
    ours, theirs = [], []
    for _ in range(n):
        uid, role = rng.choice(USERS)
        did, level, zone = rng.choice(DOCS)
        act, hour = rng.choice(ACTIONS), rng.randint(0, 23)
        ours.append(
            PolicyRequest(
                principal=Principal(id=uid, attrs={"role": role}),
                action=act,
                resource=Resource(id=did, attrs={"level": level, "zone": zone}),
                context={"hour": hour},
            )
        )
        theirs.append(
            {
                "principal": f'User::"{uid}"',
                "action": f'Action::"{act}"',
                "resource": f'Doc::"{did}"',
                "context": {"hour": hour},
            }
        )
    return ours, theirs


def entities() -> list[dict]:
    out = [
        {"uid": {"__entity": {"type": "User", "id": u}}, "attrs": {"role": r}, "parents": []}
        for u, r in USERS
    ]
    out += [
        {
            "uid": {"__entity": {"type": "Doc", "id": d}},
            "attrs": {"level": lv, "zone": z},
            "parents": [],
        }
        for d, lv, z in DOCS
    ]
    out += [
        {"uid": {"__entity": {"type": "Action", "id": a}}, "attrs": {}, "parents": []}
        for a in ACTIONS
    ]
    return out


@pytest.fixture(scope="module")
def setup():
    symbi_policies, cedar_text = policy_set()
    engine = PolicyEngine(enforce_policies=True, policies=symbi_policies)
    cedar_policies = cedarpy.PolicySet.from_str(cedar_text)
    cedar_entities = cedarpy.Entities.from_json_str(json.dumps(entities()))
    ours, theirs = request_set(N_BATCH)
    mine = [d.allowed for d in engine.evaluate_batch(ours)]
    peer = [r.allowed for r in cedarpy.is_authorized_batch(theirs, cedar_policies, cedar_entities)]
    assert mine == peer, "symbi and cedarpy disagree on the request set"
    assert 0.05 < sum(mine) / len(mine) < 0.95, "the request set should mix allows and denies"
    return engine, ours, theirs, cedar_policies, cedar_entities


def test_policy_batch_symbi(benchmark, tag, setup):
    engine, ours, _, _, _ = setup
    tag(role="symbi", **BATCH_ROW)
    benchmark(engine.evaluate_batch, ours)


def test_policy_batch_peer_cedarpy(benchmark, tag, setup):
    _, _, theirs, policies, ents = setup
    tag(role="peer", peer="cedarpy.is_authorized_batch", **BATCH_ROW)
    benchmark(cedarpy.is_authorized_batch, theirs, policies, ents)


def test_policy_single_symbi(benchmark, tag, setup):
    engine, ours, _, _, _ = setup
    reqs = ours[:N_SINGLE]
    evaluate = engine.evaluate

    def loop() -> None:
        for r in reqs:
            evaluate(r)

    tag(role="symbi", **SINGLE_ROW)
    benchmark(loop)


def test_policy_single_peer_cedarpy(benchmark, tag, setup):
    _, _, theirs, policies, ents = setup
    reqs = theirs[:N_SINGLE]
    is_authorized = cedarpy.is_authorized

    def loop() -> None:
        for r in reqs:
            is_authorized(r, policies, ents)

    tag(role="peer", peer="cedarpy.is_authorized", **SINGLE_ROW)
    benchmark(loop)
