"""Three ``streamem run`` processes in one group share one model through a leader: every true
cluster gets one id on every partition, the state topic has one writer at a time with versions
that never decrease, a paused leader is fenced, and a killed leader's standby takes over with
no input lost."""

from __future__ import annotations

import signal
import time

import pytest
from daemon_helpers import Reader, daemon_settings, make_topics, points_of, start_daemon
from kafka_helpers import produce
from sharing_helpers import (
    collapsed,
    instance,
    is_subsequence,
    leaders,
    one_to_one,
    state_log,
    wait_for,
    wave,
)

from streamem.synthetic import Mixture

MIX = Mixture.random(6, 4, separation=8.0, random_state=3)  # Bayes accuracy 1.0
PARTITIONS, POINTS_PER_MESSAGE = 4, 50
SESSION_MS = 6000  # the broker's group.min.session.timeout.ms


@pytest.mark.kafka
def test_three_instances_share_one_model_with_fencing_and_failover(
        kafka_bootstrap, topic_factory, tmp_path) -> None:
    topics = make_topics(topic_factory, partitions=PARTITIONS)
    state_topic = f"state-{topics['input']}"
    settings = dict(input__format="block", kafka__session_timeout_ms=SESSION_MS,
                    kafka__heartbeat_interval_ms=500, kafka__max_poll_interval_ms=20000,
                    model__n_components=6, model__warmup=500, sharing__enabled="true",
                    sharing__state_topic=state_topic, sharing__stats_topic=f"stats-"
                    f"{topics['input']}", checkpoint__path="null")
    daemons = [start_daemon(tmp_path, name, daemon_settings(kafka_bootstrap, tmp_path, topics,
                                                            **settings))
               for name in "abc"]
    tails = lambda: "\n---\n".join(d.log_tail() for d in daemons)  # noqa: E731
    reader: Reader | None = None
    truth: dict[int, int] = {}
    try:
        wait_for(lambda: len(leaders(daemons)) == 1, 60, lambda: "no leader\n" + tails())

        def send(start: int, n: int) -> None:
            values, keys, t = wave(MIX, start, n, POINTS_PER_MESSAGE)
            produce(kafka_bootstrap, topics["input"], values, keys=keys)
            truth.update(t)

        # Phase 1: all three answer; the leader warms up, then everyone uses its state.
        for i in range(20):
            send(i * 10_000, 8)
            time.sleep(0.25)
        reader = Reader(kafka_bootstrap, topics["output"])
        reader.read_until(lambda rs: len(points_of(rs)) >= len(truth))
        first = leaders(daemons)
        assert len(first) == 1, tails()

        # Phase 2: pause the leader past its session; a standby leads; the old one is fenced.
        old = daemons[first[0]]
        old.proc.send_signal(signal.SIGSTOP)
        paused_at = time.monotonic()
        for i in range(20, 30):
            send(i * 10_000, 8)
            time.sleep(0.25)
        others = [i for i in range(3) if i != first[0]]
        new = wait_for(lambda: [i for i in leaders(daemons) if i in others],
                       SESSION_MS / 1000 + 30, lambda: "no standby took over\n" + tails())
        took_over_s = time.monotonic() - paused_at
        me = instance(daemons[new[0]])
        wait_for(lambda: me in {w for w, _ in state_log(kafka_bootstrap, state_topic)}, 30,
                 lambda: "the new leader did not publish\n" + tails())
        old.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: old.events("leader_fenced"), 30,
                 lambda: "the paused leader was not fenced\n" + tails())

        # Phase 3: kill -9 the current leader; another takes over; nothing is lost.
        killed = daemons[new[0]]
        killed.proc.kill()
        killed_at = time.monotonic()
        for i in range(30, 40):
            send(i * 10_000, 8)
            time.sleep(0.25)
        wait_for(lambda: [i for i in leaders(daemons) if i != new[0]],
                 SESSION_MS / 1000 + 30, lambda: "no leader after kill -9\n" + tails())
        failover_s = time.monotonic() - killed_at
        reader.read_until(lambda rs: {int(a["id"]) for a in points_of(rs)} >= set(truth))
        for d in daemons:
            if d is not killed:
                assert d.stop() == 0, d.log_tail()
    finally:
        for d in daemons:
            d.proc.send_signal(signal.SIGCONT)
            d.proc.kill()
        if reader is not None:
            reader.close()

    answers = points_of(reader.records)
    assert {int(a["id"]) for a in answers} >= set(truth), "every input point is answered"
    late = [a for a in answers if not a["warmup"] and int(a["id"]) >= 100_000]
    assert len({a["partition"] for a in late}) == PARTITIONS
    share, _ = one_to_one(late, truth, MIX.n_components)
    assert share >= 0.99, f"one id per true cluster on every partition: {share:.4f}"
    assert took_over_s < SESSION_MS / 1000 + 15 and failover_s < SESSION_MS / 1000 + 15

    log = state_log(kafka_bootstrap, state_topic)
    versions = [v for _, v in log]
    assert versions == sorted(versions) and len(set(versions)) == len(versions), \
        "strictly increasing versions"
    runs = collapsed([w for w, _ in log])
    gains = collapsed([e["instance"] for e in sorted(
        (e for d in daemons for e in d.events("leader_gained")), key=lambda e: e["ts"])])
    assert len(runs) >= 2 and is_subsequence(runs, gains), \
        f"each writer in turn, as elected, no fenced leader in between: {runs} vs {gains}"
