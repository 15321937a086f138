"""Workers join and leave mid-stream on a 4-partition topic (start 1, add 2, stop 1 with
SIGTERM, add one back): no input is lost, a rebalance changes no point's labelling (each true
cluster keeps one id across instances and time), a partition's new owner is never behind its
old one, versions never decrease and the state topic has one writer at a time."""

from __future__ import annotations

import signal
import time

import pytest
from daemon_helpers import Daemon, Reader, daemon_settings, make_topics, points_of, start_daemon
from kafka_helpers import consume_all, produce
from sharing_helpers import (
    collapsed,
    is_subsequence,
    leaders,
    one_to_one,
    state_log,
    wait_for,
    wave,
)

from streamem.synthetic import Mixture

MIX = Mixture.random(6, 4, separation=8.0, random_state=5)
PARTITIONS, PER_MESSAGE = 4, 50
SESSION_MS = 6000
WARM = 40_000  # ids from here on come after the warm-up


def has_partitions(daemon: Daemon) -> bool:
    assigned = daemon.events("partitions_assigned")
    return bool(assigned and assigned[-1]["partitions"])


@pytest.mark.kafka
def test_workers_join_and_leave_mid_stream_without_relabelling_or_loss(
        kafka_bootstrap, topic_factory, tmp_path) -> None:
    topics = make_topics(topic_factory, partitions=PARTITIONS)
    state_topic = f"state-{topics['input']}"
    settings = daemon_settings(
        kafka_bootstrap, tmp_path, topics, input__format="block",
        kafka__session_timeout_ms=SESSION_MS, kafka__heartbeat_interval_ms=500,
        kafka__max_poll_interval_ms=20000, model__n_components=6, model__warmup=500,
        sharing__state_topic=state_topic, sharing__stats_topic=f"stats-{topics['input']}",
        checkpoint__path="null")
    daemons: dict[str, Daemon] = {}
    truth: dict[int, int] = {}
    keys: list[bytes] = []
    phases: list[tuple[str, int]] = []  # (phase, first id) in sending order
    wave_no = 0

    def tails() -> str:
        return "\n---\n".join(f"[{n}]\n" + d.log_tail() for n, d in daemons.items())

    def start(name: str) -> None:
        daemons[name] = start_daemon(tmp_path, name, settings)

    def send(phase: str, n_waves: int) -> None:
        nonlocal wave_no
        phases.append((phase, wave_no * 10_000))
        for _ in range(n_waves):
            values, ks, t = wave(MIX, wave_no * 10_000, 8, PER_MESSAGE)
            produce(kafka_bootstrap, topics["input"], values, keys=ks)
            truth.update(t)
            keys.extend(ks)
            wave_no += 1
            time.sleep(0.25)

    try:
        start("a")
        wait_for(lambda: leaders(list(daemons.values())), 60, lambda: "no leader\n" + tails())
        send("alone", 8)
        start("b")
        start("c")
        send("joining", 4)
        wait_for(lambda: all(has_partitions(daemons[n]) for n in "bc"), SESSION_MS / 1000 + 30,
                 lambda: "b and c got no partitions\n" + tails())
        send("three", 8)
        daemons["a"].proc.send_signal(signal.SIGTERM)
        send("leaving", 4)
        assert daemons["a"].proc.wait(60) == 0, tails()
        send("two", 8)
        start("d")
        send("joining again", 4)
        wait_for(lambda: has_partitions(daemons["d"]), SESSION_MS / 1000 + 30,
                 lambda: "d got no partitions\n" + tails())
        send("three again", 8)
        reader = Reader(kafka_bootstrap, topics["output"])
        try:
            reader.read_until(lambda rs: {int(a["id"]) for a in points_of(rs)} >= set(truth))
        finally:
            reader.close()
        for name in "bcd":
            assert daemons[name].stop() == 0, tails()
    finally:
        for d in daemons.values():
            d.proc.kill()

    # An independent consumer counts every input message answered.
    answered = consume_all(kafka_bootstrap, topics["output"], 10**9, timeout_s=5)
    assert {r.key for r in answered} >= set(keys), "every input message is answered"
    answers = points_of(answered)
    assert {int(a["id"]) for a in answers} >= set(truth), "every input point is answered"

    # One id per true cluster across instances and time: overall and in every phase.
    late = [a for a in answers if not a["warmup"] and int(a["id"]) >= WARM]
    share, mapping = one_to_one(late, truth, MIX.n_components)
    assert share >= 0.99, f"one id per true cluster: {share:.4f}"
    bounds = [first for _, first in phases[1:]] + [10**9]
    for (phase, first), end in zip(phases, bounds, strict=True):
        part = [a for a in late if first <= int(a["id"]) < end]
        if part:
            share_p, mapping_p = one_to_one(part, truth, MIX.n_components)
            assert mapping_p == mapping and share_p >= 0.98, \
                f"phase {phase!r} relabelled: {mapping_p} vs {mapping} ({share_p:.4f})"

    # A partition's new owner is never behind its old one.
    newest: dict[tuple[int, int], int] = {}
    for a in answers:
        at = (a["partition"], a["offset"])
        newest[at] = max(newest.get(at, -1), a["model_version"])
    for p in range(PARTITIONS):
        versions = [v for (q, _), v in sorted(newest.items()) if q == p]
        assert versions == sorted(versions), f"partition {p} went back to an older model"

    # Versions strictly increase; one writer at a time, in the order the role was gained.
    log = state_log(kafka_bootstrap, state_topic)
    versions = [v for _, v in log]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    gains = collapsed([e["instance"] for e in sorted(
        (e for d in daemons.values() for e in d.events("leader_gained")), key=lambda e: e["ts"])])
    runs = collapsed([w for w, _ in log])
    assert len(runs) >= 2 and is_subsequence(runs, gains), f"{runs} vs {gains}"
