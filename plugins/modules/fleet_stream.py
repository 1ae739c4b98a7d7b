#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: fleet_stream
short_description: Create or update the fleet sync's JetStream stream on the POPs' NATS cluster
version_added: "0.1.0"
description:
  - "Makes the fleet sync's stream (docs/fleet-sync.md) exist with the collection's settings - one
    subject per entry under C(anycast_edge.fleet.>), the last message of each subject kept for at
    most O(max_age_sec), O(replicas) copies on file storage - creating it when it is missing and
    updating it when a setting differs; an equal stream is left alone."
  - The POPs' own logins may not create, change or delete the stream (roles/nats_fleet gives them
    their own subjects, their consumers and reading only); this module logs in with the stream's
    login, which may create and update this one stream, and nothing else.
  - It runs on a POP and talks to that POP's own NATS server (no new network source); the
    edge_agent role runs it once per play, with the nats-py client it ships with the agent
    (O(client_lib_dir)).
  - A setting JetStream cannot change on an existing stream (its storage) is an error naming both values.
  - Waits up to O(timeout) seconds for the cluster's JetStream (a server just restarted, a leader
    being elected).
author:
  - anycast.edge maintainers (!UNKNOWN)
requirements:
  - nats-py (on the POP, in O(client_lib_dir) or on the module's Python path)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - anycast.edge.state
attributes:
  platform:
    platforms: posix
options:
  servers:
    description: The NATS servers' URLs (C(tls://address:port)), this POP's own first.
    type: list
    elements: str
    required: true
  user:
    description: The stream's login (roles/nats_fleet's C(anycast-edge/stream)).
    type: str
    required: true
  password:
    description: Its password. Never logged, never returned.
    type: str
    required: true
  tls_ca_file:
    description: The CA certificate (PEM file) that verifies the servers.
    type: path
  name:
    description: The stream's name (the agents' C(fleet_sync.stream)).
    type: str
    default: ANYCAST_EDGE_FLEET
  max_age_sec:
    description: How long a message stays on the stream at most (the agents' C(fleet_sync.max_age_sec)).
    type: float
    default: 3600
  replicas:
    description: The stream's copies (1 to 5, at most the servers of the cluster).
    type: int
    default: 3
  client_lib_dir:
    description: A folder that holds the C(nats) package (nats-py), put first on the module's import path.
    type: path
  timeout:
    description: Seconds to wait for the cluster's JetStream to answer.
    type: float
    default: 60
"""

EXAMPLES = r"""
- name: The fleet's stream, once, from the first POP
  anycast.edge.fleet_stream:
    servers: ["tls://192.0.2.11:4222"]
    user: anycast-edge/stream
    password: "{{ nats_fleet_stream_password }}"
    tls_ca_file: /etc/anycast-edge/nats-ca.pem
    replicas: 3
    client_lib_dir: /usr/local/lib/anycast-edge/agent
  run_once: true
"""

RETURN = r"""
created:
  description: Whether the stream was (or, in check mode, would be) created.
  returned: always
  type: bool
changed_fields:
  description: The settings that differed (all of them when the stream was missing).
  returned: always
  type: list
  elements: str
  sample: [num_replicas]
before:
  description: The stream's managed settings before the run (null when it did not exist).
  returned: always
  type: dict
after:
  description: Its settings after the run (what they would be, in check mode).
  returned: always
  type: dict
  sample:
    subjects: [anycast_edge.fleet.>]
    max_age: 3600.0
    max_msgs_per_subject: 1
    num_replicas: 3
    storage: file
    discard: old
"""

import asyncio
import sys
import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.anycast.edge.plugins.module_utils import _fleet_stream

# A JetStream request that finds no leader (a server just restarted) is retried this often.
RETRY_SEC = 0.5


class StreamError(Exception):
    pass


async def converge(nats, params, check_mode):
    """(before, after, changed fields, created) of the stream, acting only on a difference."""
    from nats.js import api  # pylint: disable=import-outside-toplevel
    from nats.js.errors import NotFoundError  # pylint: disable=import-outside-toplevel
    refusals = []

    async def on_error(exc):
        # A request the login may not make is refused asynchronously (-ERR), and only times out here.
        if "permissions violation" in str(exc).lower():
            refusals.append(str(exc))

    options = dict(servers=params["servers"], user=params["user"], password=params["password"],
                   allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=RETRY_SEC,
                   connect_timeout=5, error_cb=on_error)
    if params["tls_ca_file"] or any(url.startswith("tls://") for url in params["servers"]):
        import ssl  # pylint: disable=import-outside-toplevel
        options["tls"] = ssl.create_default_context(cafile=params["tls_ca_file"] or None)
    deadline = time.monotonic() + params["timeout"]
    client = await nats.connect(**options)
    try:
        js = client.jetstream(timeout=min(5.0, params["timeout"]))
        wanted = _fleet_stream.wanted_settings(params["max_age_sec"], params["replicas"])
        while True:
            try:
                try:
                    info = await js.stream_info(params["name"])
                    before = _fleet_stream.present_settings(info.config)
                except NotFoundError:
                    info, before = None, None
                changed = list(_fleet_stream.MANAGED_FIELDS) if before is None else \
                    _fleet_stream.differences(before, wanted)
                immutable = [field for field in changed if before is not None and field in _fleet_stream.IMMUTABLE_FIELDS]
                if immutable:
                    raise StreamError("the stream %s has %s, which JetStream cannot change to %s: remove the stream "
                                      "(the agents republish what they hold) or keep its settings"
                                      % (params["name"], ", ".join("%s=%s" % (field, before[field]) for field in immutable),
                                         ", ".join("%s=%s" % (field, wanted[field]) for field in immutable)))
                if not changed or check_mode:
                    return before, dict(wanted) if changed else before, changed, before is None
                config = _fleet_stream.stream_config(api, params["name"], params["max_age_sec"], params["replicas"])
                if before is None:
                    await js.add_stream(config)
                else:
                    # The fields this collection does not manage stay as they are.
                    await js.update_stream(info.config.evolve(**dict((field, getattr(config, field))
                                                                     for field in _fleet_stream.MANAGED_FIELDS)))
                after = _fleet_stream.present_settings((await js.stream_info(params["name"])).config)
                return before, after, changed, before is None
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
                # No JetStream leader yet (a server restarting, a meta leader being elected).
                if refusals:
                    raise StreamError("the login %s may not do this: %s" % (params["user"], refusals[0]))
                if time.monotonic() > deadline:
                    raise StreamError("the NATS cluster's JetStream did not answer within %g s (%s)"
                                      % (params["timeout"], type(exc).__name__))
                await asyncio.sleep(RETRY_SEC)
    finally:
        await client.close()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            servers=dict(type="list", elements="str", required=True),
            user=dict(type="str", required=True),
            password=dict(type="str", required=True, no_log=True),
            tls_ca_file=dict(type="path"),
            name=dict(type="str", default="ANYCAST_EDGE_FLEET"),
            max_age_sec=dict(type="float", default=3600.0),
            replicas=dict(type="int", default=3),
            client_lib_dir=dict(type="path"),
            timeout=dict(type="float", default=60.0),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if not 1 <= params["replicas"] <= 5:
        module.fail_json(msg="replicas: %r is not 1 to 5 (JetStream's limit)" % params["replicas"])
    if params["max_age_sec"] <= 0:
        module.fail_json(msg="max_age_sec: %r is not a number > 0" % params["max_age_sec"])
    if params["client_lib_dir"]:
        sys.path.insert(0, params["client_lib_dir"])
    try:
        import nats  # pylint: disable=import-outside-toplevel
        import nats.errors  # pylint: disable=import-outside-toplevel
        import nats.js.errors  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        module.fail_json(msg=missing_required_lib("nats-py (in client_lib_dir %s)" % params["client_lib_dir"]),
                         exception=str(exc))
    try:
        before, after, changed, created = asyncio.run(converge(nats, params, module.check_mode))
    except StreamError as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # pylint: disable=broad-except
        # The connection's own errors (refused login, TLS, no server): the message names no secret.
        where = ", ".join(params["servers"])
        module.fail_json(msg="the stream %s on %s: %s: %s" % (params["name"], where, type(exc).__name__, exc))
    result = dict(changed=bool(changed), created=created, changed_fields=changed, before=before, after=after)
    if module._diff:  # pylint: disable=protected-access
        result["diff"] = dict(before=before or {}, after=after or {})
    module.exit_json(**result)


if __name__ == "__main__":
    main()
