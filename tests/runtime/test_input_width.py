"""A stray first message of another width, with ``input.n_features`` null (the default).

It used to fix the width for good: every later message of the real width was dead-lettered as
``wrong_dimension``, by every process whose partitions it reached first, and with a shared
model the leader refused their deltas too. Now the width stays provisional until the model has
warmed up, and the width most messages have takes over (``streamem.width``). Two real
``streamem run`` processes in one group, with their own models and with a shared one.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pytest
from daemon_helpers import Reader, daemon_settings, make_topics, points_of, start_daemon
from kafka_helpers import produce

from streamem.width import MIN_VOTES

N_GOOD, WIDTH, STRAY_WIDTH = 400, 4, 3


def _keyed(keys: list[str], widths: int, rng: np.random.Generator) -> list[bytes]:
    return [json.dumps({"id": k, "x": rng.normal(size=widths).tolist()}).encode() for k in keys]


@pytest.mark.kafka
@pytest.mark.parametrize("sharing", ["false", "true"])
def test_a_stray_first_message_costs_only_itself(kafka_bootstrap, topic_factory, tmp_path,
                                                 sharing: str) -> None:
    topics = make_topics(topic_factory, partitions=2)
    settings = daemon_settings(
        kafka_bootstrap, tmp_path, topics, model__n_components=2, model__warmup=100,
        sharing__enabled=sharing, sharing__state_topic=f"state-{topics['input']}",
        sharing__stats_topic=f"stats-{topics['input']}", checkpoint__path="null")
    daemons = [start_daemon(tmp_path, name, settings) for name in "ab"]
    tails = lambda: "\n---\n".join(d.log_tail() for d in daemons)  # noqa: E731
    rng = np.random.default_rng(0)
    output = Reader(kafka_bootstrap, topics["output"])
    dead = Reader(kafka_bootstrap, topics["dead"])
    try:
        deadline = time.monotonic() + 60
        while sum(bool(d.events("partitions_assigned")) for d in daemons) < 2:
            assert time.monotonic() < deadline, "not both assigned\n" + tails()
            time.sleep(0.2)
        strays = ["stray-0", "stray-1"]
        produce(kafka_bootstrap, topics["input"], _keyed(strays, STRAY_WIDTH, rng),
                keys=[k.encode() for k in strays])
        output.read_until(lambda rs: len(rs) >= 2)
        good = [f"good-{i}" for i in range(N_GOOD)]
        for start in range(0, N_GOOD, 20):  # a live stream: small batches
            produce(kafka_bootstrap, topics["input"], _keyed(good[start:start + 20], WIDTH, rng),
                    keys=[k.encode() for k in good[start:start + 20]])
        late = ["late-stray"]  # after the warm-up the width is final

        def seen(keys: list[str]) -> bool:
            done = {p["id"] for p in points_of(output.records)}
            done |= {r.key.decode() for r in dead.records}
            return set(keys) <= done

        for wanted in (good, late):
            if wanted is late:
                produce(kafka_bootstrap, topics["input"], _keyed(late, STRAY_WIDTH, rng),
                        keys=[k.encode() for k in late])
            deadline = time.monotonic() + 90
            while not seen(wanted) and time.monotonic() < deadline:
                output.read_until(lambda _, w=wanted: seen(w), 1)
                dead.read_until(lambda _, w=wanted: seen(w), 1)
        answered = Counter(p["id"] for p in points_of(output.records))
        refused = {r.key.decode(): dict(r.headers)["streamem.reason"].decode()
                   for r in dead.records}
        assert max(answered.values()) == 1 and not set(answered) & set(refused), tails()
        assert set(answered) | set(refused) == {*strays, *good, *late}, tails()
        lost = [k for k in good if k in refused]
        # At most the messages counted before the new width outvoted the stray one, per process.
        assert len(lost) < 2 * MIN_VOTES, (lost, tails())
        assert {refused[k] for k in lost} <= {"wrong_dimension"}, tails()
        assert refused.get(late[0]) == "wrong_dimension", tails()
        last = [p for p in points_of(output.records) if p["id"] in good][-50:]
        assert not any(p["warmup"] for p in last), "the model never warmed up on the new width"
        assert any(d.events("n_features_revised") for d in daemons), tails()
    finally:
        output.close()
        dead.close()
        for d in daemons:
            d.stop()
