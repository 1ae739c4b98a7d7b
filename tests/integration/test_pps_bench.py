"""The packets-per-second bench's generator and counters (bench/pps.py), on a few frames.

The bench's figures are only as good as two facts, tested here on counts small enough to be exact
(fewer frames than a veth's ring holds, so none is lost to a full ring): the generator really
puts frames on the wire - BPF_PROG_TEST_RUN's live frames out of the world's veth, received by the
POP's veth in native mode - and each case's counter counts exactly those frames on exactly the
path the case claims. No speed is asserted. Where the kernel refuses live frames (EPERM on
6.18.44-fc), bench/pps.py sends by an AF_PACKET socket instead (bench/README.md), and these tests
check that generator; the page-recycling test is then skipped, saying why.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from bench import pps
from bench.measure import SetupError

FEW = 200           # below the veth's ring (256 frames): every frame sent arrives
DENY = next(case for case in pps.CASES if case.counted == "drop_deny")


@pytest.fixture(scope="module")
def world(xdp_edge_object):
    if os.geteuid() != 0:
        pytest.skip("needs root (BPF, namespaces)")
    made = pps.PpsWorld(xdp_edge_object, "test")
    try:
        yield made
    finally:
        made.close()


@pytest.mark.parametrize("case", pps.CASES, ids=[case.name for case in pps.CASES])
def test_every_frame_the_generator_sends_is_counted_on_the_cases_path(world, case):
    got = pps.measure_case(world, case, frames=FEW)
    # measure_case proved that nothing else moved; here: all of them arrived and were counted.
    assert (got.sent, got.received, got.counted) == (FEW, FEW, FEW)
    assert got.cpu_ns > 0


def test_the_same_denied_frames_pass_the_pop_without_xdp_edge_and_none_with_it(world):
    """The attacker's frames (a denied source) with no defence: the kernel forwards every one to the
    backend's side; with xdp_edge on the uplink none gets there, and every one is counted drop_deny."""
    undefended = pps.Case("denied source, no program", "denied_frame", "kernel_forward", "back", "")
    got = pps.measure_case(world, undefended, frames=FEW)
    assert got.counted == FEW
    before = world.back_counter.received()
    got = pps.measure_case(world, DENY, frames=FEW)
    assert got.counted == FEW
    assert world.back_counter.received() == before


def test_a_case_counted_on_a_path_its_frames_do_not_take_is_refused(world):
    """The checks behind every figure: denied frames claimed as unverified drops, or as forwards."""
    for wrong in (dataclasses.replace(DENY, name="wrong reason", counted="drop_unverified"),
                  dataclasses.replace(DENY, name="wrong far side", counted="back")):
        with pytest.raises(SetupError, match=wrong.name):
            pps.measure_case(world, wrong, frames=FEW)


def test_the_generator_rewrites_a_page_an_answer_was_written_over(world):
    """The A2S challenge is written over the request, in the generator's own pages, which come back
    to it: each later frame is still the request (else xdp_edge would see answers, not requests)."""
    challenge = next(case for case in pps.CASES if case.counted == "gen")
    pps.measure_case(world, challenge, frames=1)        # the generator is chosen at the first send
    if world.packet_socket is not None:
        # Only live frames recycle the generator's pages; a socket sends a fresh copy each time, so
        # here the test would pass without testing anything.
        pytest.skip("this kernel refuses live frames, so no page is recycled: %s" % world.generator_method)
    for _round in range(3):
        got = pps.measure_case(world, challenge, frames=FEW)
        assert got.counted == FEW
