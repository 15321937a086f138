"""What every output says is true: the version that answered, the input's headers and time."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry

from streamem.config import load_config
from streamem.formats.block import decode_result_block, encode_block
from streamem.io.base import Record
from streamem.io.memory import MemorySink, MemorySource
from streamem.metrics import Metrics
from streamem.runtime import Runtime, restore_model
from streamem.synthetic import Mixture

MIX = Mixture.random(3, 3, random_state=5)
REFUSED = 777.0  # a coordinate the model below refuses, so the runtime bisects its batch


def run(values: list, *overrides: str) -> tuple[MemorySink, list[int]]:
    """Run the loop over ``values``; the versions the model had before each batch's first fit."""
    cfg = load_config(None, ["model.n_components=3", "model.random_state=0", "model.warmup=60",
                             "checkpoint.path=null", *overrides], environ={})
    source, sink = MemorySource(values, batch_size=5), MemorySink()
    model, resume = restore_model(cfg, ())
    real_fit, before = model.partial_fit, []

    def partial_fit(X, *args, **kwargs):
        if len(X) == 5 * 4 or len(X) == 5:  # a whole batch (of 5 messages of 4 or 1 points)
            before.append(model.version_)
        if (X == REFUSED).any():
            raise ValueError("refused")
        return real_fit(X, *args, **kwargs)

    model.partial_fit = partial_fit
    assert Runtime(cfg, source, sink, model, Metrics(CollectorRegistry()),
                   resume=resume).run() == 0
    return sink, before


def test_each_answer_carries_the_version_that_answered_it():
    X, _ = MIX.sample(200, random_state=1)
    values = [json.dumps({"id": i, "x": x.tolist()}).encode() for i, x in enumerate(X)]
    sink, before = run(values)
    outputs = sink.on("streamem.assignments")
    assert len(outputs) == 200 and len(before) == 40
    records = [json.loads(v) for _, _, v, _ in outputs]
    versions = [r["model_version"] for r in records]
    # Past the warm-up, a batch is answered by the version the model had before learning it
    # (the warm-up's last batch is answered by the mixture its end fitted: warmup true).
    online = [i for i, r in enumerate(records) if not r["warmup"]]
    assert len(online) == 140 and versions[-1] > 0
    assert [versions[i] for i in online] == [before[i // 5] for i in online]
    assert [dict(h)["streamem.model_version"] for _, _, _, h in outputs] == \
        [str(v).encode() for v in versions]


def test_a_bisected_batch_is_stamped_with_the_version_of_its_first_part():
    X, _ = MIX.sample(400, random_state=2)
    X[330, 1] = REFUSED  # in the 17th batch, past the warm-up
    values = [encode_block(X[i:i + 4], ids=range(i, i + 4), dtype="f64")
              for i in range(0, 400, 4)]
    sink, before = run(values, "input.format=block", "output.format=block")
    docs = [decode_result_block(v) for _, _, v, _ in sink.on("streamem.assignments")]
    assert len(docs) == 100 and len(before) == 20
    online = [i for i, d in enumerate(docs) if not d["warmup"].any()]
    assert len(online) > 80
    assert [docs[i]["model_version"] for i in online] == [before[i // 5] for i in online]
    assert docs[82]["index"].tolist() == [0, 1, 3]  # row 330 refused, its neighbours answered
    assert before[16] > 0


def test_input_headers_and_timestamp_travel_to_the_answer_and_the_dead_letter():
    X, _ = MIX.sample(3, random_state=3)
    good = [json.dumps({"x": x.tolist()}).encode() for x in X]
    headers = [("traceparent", b"00-abc-01"), ("streamem.model_version", b"spoofed"),
               ("streamem.reason", b"spoofed")]
    values = [Record("in", 0, 0, b"k", v, tuple(headers), 1_600_000_000_000 + i)
              for i, v in enumerate([*good, b"not json"])]
    sink, _ = run(values)
    out = [(m, t) for m, t in zip(sink.sent, sink.timestamps, strict=True)
           if m[0] == "streamem.assignments"]
    assert [t for _, t in out] == [1_600_000_000_000, 1_600_000_000_001, 1_600_000_000_002]
    for (_, key, value, h), _ in out:
        assert key == b"k"
        assert h == (("traceparent", b"00-abc-01"), ("streamem.reason", b"spoofed"),
                     ("streamem.model_version", str(json.loads(value)["model_version"]).encode()))
    [(dead, stamp)] = [(m, t) for m, t in zip(sink.sent, sink.timestamps, strict=True)
                       if m[0] == "streamem.dead-letter"]
    assert stamp == 1_600_000_000_003
    names = [n for n, _ in dead[3]]
    assert names[:2] == ["traceparent", "streamem.model_version"]
    assert dict(dead[3])["streamem.reason"] == b"bad_json"
    assert names.count("streamem.reason") == 1
