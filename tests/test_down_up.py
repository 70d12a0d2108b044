"""A worker that must re-emit a whole log (``agentstream down && up``) does it in few round trips.

After the embedded broker is replaced, the derived topics of the new log start empty and the
worker re-emits every output from offset 0. The chaos suite's ``down-up`` scenario on a
~195k-event log did not converge within 240 s: each worker batch's outputs went out as
dozens of 16 KB record batches (aiokafka's default), and aiokafka sends one request per
broker at a time, each 0.1-0.8 s through the stack's gate (docs/broker-gaps.md). These
tests pin the cause on the real broker: a batch's outputs leave as one record batch per
topic-partition.
"""

from __future__ import annotations

import pytest
from conftest import Broker

from schemas.topics import EPISODES, STATE, VIOLATIONS
from streams.processor import OutRecord, Publisher
from streams.producer import partition_for_key
from streams.state_reader import fetch_high_watermarks

pytestmark = pytest.mark.integration


def _outputs(agents: int, per_agent: int, size: int) -> list[OutRecord]:
    """Outputs shaped like a re-fold's: many derived records and a state per agent."""
    out: list[OutRecord] = []
    for a in range(agents):
        key = f"agent-{a}".encode()
        for i in range(per_agent):
            topic = EPISODES if i % 4 else VIOLATIONS
            out.append(OutRecord(topic, key, (f'{{"i":{i},"pad":"' + "x" * size + '"}').encode()))
        out.append(OutRecord(STATE, key, b'{"agent":"' + key + b'"}'))
    return out


async def test_a_batch_of_outputs_goes_out_as_one_record_batch_per_topic_partition(
    kafka: Broker,
) -> None:
    publisher = Publisher(kafka.bootstrap)
    await publisher.start()
    try:
        records = _outputs(agents=8, per_agent=300, size=600)  # ~1.5 MB, ~190 KB per agent
        futures = await publisher.send(records)
        parts = await publisher._partitions_of(EPISODES)
        destinations = {(r.topic, partition_for_key(r.key, parts)) for r in records}
        # one batch (one future) per topic-partition: with 16 KB batches this was ~110
        assert len(futures) == len(destinations)
        for f in futures:
            await f
    finally:
        await publisher.stop()
    # and every record arrived
    got = 0
    for topic in (EPISODES, VIOLATIONS, STATE):
        got += sum((await fetch_high_watermarks(kafka.bootstrap, topic)).values())
    assert got == len(records)


async def test_an_output_larger_than_a_batch_still_goes_out_alone(kafka: Broker) -> None:
    publisher = Publisher(kafka.bootstrap, max_batch_bytes=64 << 10)
    await publisher.start()
    try:
        big = OutRecord(EPISODES, b"agent-0", b"y" * (200 << 10))  # 200 KB > the 64 KB batch
        small = _outputs(agents=1, per_agent=3, size=10)
        futures = await publisher.send([big, *small])
        for f in futures:
            await f
    finally:
        await publisher.stop()
    hw = await fetch_high_watermarks(kafka.bootstrap, EPISODES)
    assert sum(hw.values()) == 1 + sum(1 for r in small if r.topic == EPISODES)
