"""The agent's A2S protocol (INFO, PLAYER, RULES) against a real client library (python-a2s) and a test server."""

from __future__ import annotations

import socket

import a2s as python_a2s
import pytest

from a2s_responder import DEFAULT_INFO, DEFAULT_PLAYERS, DEFAULT_RULES, A2SResponder, build_info_reply
from anycast_edge_agent import a2s

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi


@pytest.fixture
def challenging_server():
    with A2SResponder(demand_challenge=True) as server:
        yield server


def test_the_test_server_speaks_a2s_to_a_real_client(challenging_server):
    """python-a2s (an independent implementation) completes the challenge and parses our reply."""
    info = python_a2s.info(challenging_server.address, timeout=2)
    assert (info.server_name, info.map_name, info.folder, info.game) == (
        DEFAULT_INFO["name"], DEFAULT_INFO["map"], DEFAULT_INFO["folder"], DEFAULT_INFO["game"])
    assert (info.app_id, info.player_count, info.max_players, info.bot_count) == (730, 7, 32, 1)
    assert (info.port, info.steam_id, info.keywords, info.game_id) == (
        27015, DEFAULT_INFO["steam_id"], "anycast,edge", 730)
    assert challenging_server.challenged == 1 and challenging_server.answered == 1


def test_query_completes_the_challenge_and_returns_the_whole_reply(challenging_server):
    result = a2s.query_info(challenging_server.address, timeout=2)
    assert result.kind == a2s.INFO and result.answered
    assert result.challenges == 1
    assert result.payload == challenging_server.reply
    assert challenging_server.requests == 2  # the bare request and the one with the challenge


def test_parsed_fields_agree_with_the_real_client(challenging_server):
    ours = a2s.query_info(challenging_server.address, timeout=2).info
    theirs = python_a2s.info(challenging_server.address, timeout=2)
    assert ours["name"] == theirs.server_name and ours["map"] == theirs.map_name
    assert (ours["players"], ours["max_players"], ours["bots"]) == (
        theirs.player_count, theirs.max_players, theirs.bot_count)
    assert (ours["server_type"], ours["environment"]) == (theirs.server_type, theirs.platform)
    assert (ours["password"], ours["vac"], ours["version"]) == (
        theirs.password_protected, theirs.vac_enabled, theirs.version)
    assert (ours["port"], ours["steam_id"], ours["keywords"], ours["game_id"]) == (
        theirs.port, theirs.steam_id, theirs.keywords, theirs.game_id)


def test_a_server_without_challenge_answers_at_once():
    with A2SResponder(demand_challenge=False) as server:
        result = a2s.query_info(server.address, timeout=2)
    assert (result.kind, result.challenges) == (a2s.INFO, 0)
    assert server.requests == 1


def test_a_reply_without_extra_data_parses():
    info = {key: value for key, value in DEFAULT_INFO.items()
            if key not in ("port", "steam_id", "keywords", "game_id")}
    parsed = a2s.parse_info(build_info_reply(info)[:-1])  # no EDF byte at all: old servers
    assert parsed["edf"] == 0 and parsed["name"] == DEFAULT_INFO["name"]


def test_a_split_reply_is_recognised_and_not_returned_as_payload():
    with A2SResponder(split=True) as server:
        result = a2s.query_info(server.address, timeout=2)
    assert result.kind == a2s.SPLIT and result.answered and result.payload == b""


@pytest.mark.parametrize("cut", [6, 20, 40, 60])
def test_a_truncated_reply_is_rejected(cut):
    with pytest.raises(a2s.A2SError):
        a2s.parse_info(build_info_reply(DEFAULT_INFO)[:cut])


def test_classify():
    assert a2s.classify(b"\xff\xff\xff\xffA1234") == a2s.CHALLENGE
    assert a2s.classify(b"\xff\xff\xff\xffA12") == a2s.OTHER       # challenge without its 4 bytes
    assert a2s.classify(b"\xfe\xff\xff\xff\x01\x02") == a2s.SPLIT     # header -2, little-endian
    assert a2s.classify(b"\xff\xff\xff\xfe\x01\x02") == a2s.OTHER     # not a header Valve sends
    assert a2s.classify(b"\xff\xff\xff\xffD\x00") == a2s.PLAYER     # A2S_PLAYER answer
    assert a2s.classify(b"\xff\xff\xff\xffE\x00\x00") == a2s.RULES
    assert a2s.classify(b"\xff\xff\xff\xffm\x00") == a2s.OTHER      # GoldSrc's obsolete info answer
    assert a2s.classify(b"hello") == a2s.OTHER


def test_no_server_is_a_timeout_or_a_refusal_not_an_answer():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unused:
        unused.bind(("127.0.0.1", 0))
        address = unused.getsockname()
    result = a2s.query_info(address, timeout=0.3)
    assert result.kind is None and not result.answered and result.error


def test_a_server_that_only_ever_challenges_is_given_up_on():
    with A2SResponder(demand_challenge=True) as server:
        result = a2s.query_info(server.address, timeout=1, max_challenges=0)
    assert result.kind is None and "challenges" in result.error


def test_the_query_names_are_the_caches_kinds():
    """One list of kinds: the agent's query names are _edge_abi's (enum a2s_kind, in order)."""
    assert a2s.QUERIES == abi.A2S_KINDS


def test_the_test_servers_player_and_rules_replies_satisfy_a_real_client(challenging_server):
    """python-a2s completes PLAYER and RULES against the responder (its challenge included):
    the replies the refresher caches are what clients parse."""
    players = python_a2s.players(challenging_server.address, timeout=2)
    assert [(p.name, p.score, p.duration) for p in players] == list(DEFAULT_PLAYERS)
    assert python_a2s.rules(challenging_server.address, timeout=2) == DEFAULT_RULES


def test_player_and_rules_queries_complete_the_challenge_at_once(challenging_server):
    results = a2s.query(challenging_server.address, a2s.QUERIES, timeout=2)
    assert {kind: (result.kind, result.challenges) for kind, result in results.items()} == {
        "info": ("info", 1), "player": ("player", 1), "rules": ("rules", 1)}
    assert results["player"].payload == challenging_server.reply_of("player")
    assert [(p["name"], p["score"]) for p in results["player"].info] == [(n, s) for n, s, d in DEFAULT_PLAYERS]
    assert results["rules"].info == DEFAULT_RULES
    assert a2s.request("player") == b"\xff\xff\xff\xffU\xff\xff\xff\xff"
    assert a2s.request("rules", b"1234") == b"\xff\xff\xff\xffV1234"


@pytest.mark.parametrize("cut", [6, 9, 20])
def test_a_truncated_player_reply_is_rejected(challenging_server, cut):
    with pytest.raises(a2s.A2SError):
        a2s.parse_players(challenging_server.reply_of("player")[:cut])


@pytest.mark.parametrize("cut", [7, 12, 30])
def test_a_truncated_rules_reply_is_rejected(challenging_server, cut):
    with pytest.raises(a2s.A2SError):
        a2s.parse_rules(challenging_server.reply_of("rules")[:cut])
