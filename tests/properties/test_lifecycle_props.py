"""The lifecycle controller is exactly the seed's state machine (hypothesis stateful)."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from symbi.errors import IllegalTransition
from symbi.lifecycle import AgentState, LifecycleController, Transition

S = AgentState
# Written out independently of symbi.lifecycle.TRANSITIONS, from the seed's text.
LEGAL = {
    (S.INITIALIZING, S.READY),
    (S.INITIALIZING, S.FAILED),
    (S.READY, S.RUNNING),
    (S.READY, S.TERMINATED),
    (S.RUNNING, S.SUSPENDED),
    (S.RUNNING, S.READY),
    (S.SUSPENDED, S.RUNNING),
    (S.SUSPENDED, S.TERMINATED),
    (S.FAILED, S.TERMINATED),
}


class Lifecycle(RuleBasedStateMachine):
    agents = Bundle("agents")

    @initialize()
    def setup(self) -> None:
        self.ctl = LifecycleController()
        self.model: dict[str, AgentState] = {}
        self.seen: list[Transition] = []
        self.expected: list[tuple[str, AgentState, AgentState]] = []
        self.ctl.subscribe(self.seen.append)
        self.n = 0

    @rule(target=agents)
    def register(self) -> str:
        self.n += 1
        aid = f"a{self.n}"
        self.ctl.register(aid)
        self.model[aid] = S.INITIALIZING
        return aid

    @rule(aid=agents, to=st.sampled_from(list(AgentState)))
    def transition(self, aid: str, to: AgentState) -> None:
        cur = self.model[aid]
        if (cur, to) in LEGAL:
            t = self.ctl.transition(aid, to, "test")
            assert (t.from_state, t.to_state) == (cur, to)
            self.model[aid] = to
            self.expected.append((aid, cur, to))
        else:
            with pytest.raises(IllegalTransition) as ei:
                self.ctl.transition(aid, to, "test")
            assert ei.value.from_state == cur.value
            assert ei.value.to_state == to.value

    @invariant()
    def states_match_the_model(self) -> None:
        for aid, st_ in self.model.items():
            assert self.ctl.state(aid) is st_
        counts = self.ctl.counts()
        for s in AgentState:
            assert counts[s.value] == sum(1 for v in self.model.values() if v is s)

    @invariant()
    def observers_saw_every_legal_transition_in_order(self) -> None:
        assert [(t.agent_id, t.from_state, t.to_state) for t in self.seen] == self.expected


TestLifecycle = Lifecycle.TestCase
