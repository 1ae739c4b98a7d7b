# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The fleet sync's JetStream stream: its settings, in one place, for the two that may create it -
the fleet_stream module (what the nats_fleet/edge_agent roles run, once, from one POP, with the
stream's own login: a POP's login may not create, change or delete it) and the agent (which
creates it only where no role did: a bus of its own, as in the tests).

One subject per entry, ``anycast_edge.fleet.<origin>.<kind>.<key in hex>``, keeping the last
message of each subject (a key-value bucket in all but name) for at most ``max_age_sec``
(docs/fleet-sync.md)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

SUBJECT_ROOT = "anycast_edge.fleet"
# The settings this collection decides, as nats-py's StreamConfig fields (max_age in seconds).
# storage cannot be changed on an existing stream (JetStream refuses): a difference there is an
# error for the operator, not an update.
MANAGED_FIELDS = ("subjects", "max_age", "max_msgs_per_subject", "num_replicas", "storage", "discard")
IMMUTABLE_FIELDS = ("storage",)


def wanted_settings(max_age_sec, replicas):
    """The stream's managed settings, as plain values (storage and discard as JetStream spells them)."""
    return {
        "subjects": [SUBJECT_ROOT + ".>"],
        "max_age": float(max_age_sec),
        "max_msgs_per_subject": 1,
        "num_replicas": int(replicas),
        "storage": "file",
        "discard": "old",
    }


def stream_config(api, name, max_age_sec, replicas):
    """nats-py's StreamConfig of the fleet stream (``api`` is nats.js.api: the caller has imported nats)."""
    settings = wanted_settings(max_age_sec, replicas)
    settings["storage"] = api.StorageType(settings["storage"])
    settings["discard"] = api.DiscardPolicy(settings["discard"])
    return api.StreamConfig(name=name, **settings)


def present_settings(config):
    """The managed settings of a StreamConfig read from the server, as plain values."""
    settings = {}
    for field in MANAGED_FIELDS:
        value = getattr(config, field, None)
        settings[field] = getattr(value, "value", value)
    settings["subjects"] = list(settings["subjects"] or [])
    if settings["max_age"] is not None:
        settings["max_age"] = float(settings["max_age"])
    return settings


def differences(present, wanted):
    """The managed fields whose values differ (max_age to the microsecond: the server keeps nanoseconds)."""
    changed = []
    for field in MANAGED_FIELDS:
        if field == "max_age":
            if present.get(field) is None or abs(present[field] - wanted[field]) > 1e-6:
                changed.append(field)
        elif present.get(field) != wanted[field]:
            changed.append(field)
    return changed
