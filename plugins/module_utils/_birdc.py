# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Talk to a running BIRD 2 through ``birdc`` and read its answers as data.

``birdc`` exits 0 for most failures (a rejected reconfiguration, an unknown protocol), so
its exit code is never trusted. We always run it with ``-v``: every reply line then starts
with BIRD's four-digit reply code (doc/reply_codes in BIRD's sources), ``-`` when more lines
of the same reply follow, or a space for a continuation of the previous code. Codes that
start with 8 or 9 are run-time and parse errors; 0xxx are completions, 1xxx table rows,
2xxx table headings.

The functions below are used by bird_config, bird_protocol and bird_info; each raises
BirdcError (with BIRD's own words) when BIRD says no.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import subprocess

# Completion codes we act on (BIRD 2.0 doc/reply_codes).
WELCOME = "0001"
READING_CONFIG = "0002"
RECONFIGURED = "0003"
RECONFIG_IN_PROGRESS = "0004"
RECONFIG_QUEUED = "0005"
ALREADY_DISABLED = "0008"
DISABLED = "0009"
ALREADY_ENABLED = "0010"
ENABLED = "0011"
RECONFIG_CONFIRMED = "0018"
NOTHING_TO_DO = "0019"
CONFIG_OK = "0020"
UNDO_REQUESTED = "0021"
UNDO_SCHEDULED = "0022"
CONFIG_ERROR = "8002"

_REPLY_LINE = re.compile(r"^(\d{4})([ -])(.*)$")


class BirdcError(Exception):
    """BIRD (or birdc) refused a command; str() is BIRD's message."""

    def __init__(self, message, code=None, command=None):
        super(BirdcError, self).__init__(message)
        self.code = code
        self.command = command


class Reply:
    """One parsed birdc answer: a list of (code, text) lines, continuations folded in.

    ``connected`` says BIRD greeted birdc (the 0001 banner): an answer with no lines after it is
    then an empty answer (``show route export`` of a session that is sent nothing), not a failure."""

    def __init__(self, lines, connected=False):
        self.lines = lines
        self.connected = connected

    @property
    def codes(self):
        return [code for code, dummy in self.lines]

    def has(self, *codes):
        return any(code in codes for code in self.codes)

    def errors(self):
        return [(code, text) for code, text in self.lines if code[0] in "89"]

    def text(self, code=None):
        return "\n".join(text for line_code, text in self.lines if code is None or line_code == code)


def parse_reply(output):
    """Parse ``birdc -v`` output into a Reply.

    A line without a code continues the previous code (BIRD prints a leading space instead of
    repeating it). The welcome banner (0001) is dropped.
    """
    lines = []
    code = None
    connected = False
    for raw in output.splitlines():
        match = _REPLY_LINE.match(raw)
        if match:
            code = match.group(1)
            text = match.group(3)
        elif code is not None:
            # Continuation: BIRD indents it by one space in place of the code.
            text = raw[1:] if raw.startswith(" ") else raw
        else:
            continue
        if code == WELCOME:
            connected = True
            continue
        lines.append((code, text))
    return Reply(lines, connected)


class Birdc:
    """A BIRD control socket. ``run_command`` is AnsibleModule.run_command or compatible."""

    def __init__(self, socket_path, birdc_path="birdc", run_command=None):
        self.socket_path = socket_path
        self.birdc_path = birdc_path
        self._run_command = run_command or _run_command

    def run(self, command, check=True):
        """Run one CLI command; return its Reply. With check, raise on any 8xxx/9xxx line."""
        # A quoted word (a file name) stays one argument; birdc joins its arguments again.
        argv = [self.birdc_path, "-v", "-s", self.socket_path] + _split_keep_quoted(command)
        rc, out, err = self._run_command(argv)
        reply = parse_reply(out)
        if not reply.lines and not reply.connected:
            # birdc could not even connect (no socket, no permission): that is on stderr.
            raise BirdcError(
                "birdc %s failed (rc=%s): %s" % (command, rc, (err or out).strip() or "no reply"),
                command=command,
            )
        if check and reply.errors():
            code, text = reply.errors()[0]
            raise BirdcError("BIRD refused '%s': %s" % (command, "; ".join(t for dummy, t in reply.errors())),
                             code=code, command=command)
        return reply

    # ---- protocols --------------------------------------------------------------------------

    def protocols(self):
        """``show protocols``: list of dicts name, proto, table, state, since, info."""
        reply = self.run("show protocols")
        return parse_protocols(reply)

    def protocol(self, name):
        for proto in self.protocols():
            if proto["name"] == name:
                return proto
        return None

    def established_bgp_sessions(self):
        return sorted(p["name"] for p in self.protocols() if is_established(p))

    def set_protocol(self, name, enabled):
        """Enable or disable a protocol; return True when BIRD changed something."""
        reply = self.run(("enable " if enabled else "disable ") + quote_symbol(name))
        if reply.has(ENABLED, DISABLED):
            return True
        if reply.has(ALREADY_ENABLED, ALREADY_DISABLED):
            return False
        raise BirdcError("unexpected reply to %s %s: %s" % ("enable" if enabled else "disable", name, reply.text()))

    # ---- configuration ----------------------------------------------------------------------

    def configure(self, path, timeout=None):
        """``configure "path" [timeout N]``; raise BirdcError with BIRD's message if rejected."""
        command = 'configure "%s"' % path
        if timeout:
            command += " timeout %d" % int(timeout)
        reply = self.run(command, check=False)
        if reply.has(CONFIG_ERROR) or reply.errors():
            raise BirdcError("BIRD rejected %s: %s" % (path, "; ".join(t for dummy, t in reply.errors())),
                             code=CONFIG_ERROR, command=command)
        if not reply.has(RECONFIGURED, RECONFIG_IN_PROGRESS, RECONFIG_QUEUED):
            raise BirdcError("unexpected reply to %s: %s" % (command, reply.text()), command=command)
        return reply

    def confirm(self):
        reply = self.run("configure confirm")
        return reply.has(RECONFIG_CONFIRMED)

    def undo(self):
        reply = self.run("configure undo")
        return reply.has(RECONFIGURED, RECONFIG_IN_PROGRESS, UNDO_REQUESTED)

    # ---- routes -----------------------------------------------------------------------------

    def routes(self, selector):
        """``show route <selector> all`` parsed into a list of route dicts."""
        return parse_routes(self.run("show route %s all" % selector))


def _run_command(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def _split_keep_quoted(command):
    parts = []
    for match in re.finditer(r'"[^"]*"|\S+', command):
        parts.append(match.group(0))
    return parts


def quote_symbol(name):
    # fullmatch: `$` would also accept a final newline, i.e. a second birdc command line.
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise BirdcError("'%s' is not a valid BIRD protocol name" % name)
    return name


def is_established(proto):
    return proto["proto"] == "BGP" and proto["state"] == "up" and proto["info"].startswith("Established")


def parse_protocols(reply):
    """Rows of ``show protocols`` (code 1002; the 2002 heading names the columns)."""
    result = []
    for code, text in reply.lines:
        if code != "1002":
            continue
        fields = text.split(None, 5)
        if len(fields) < 5:
            continue
        # Since may be a time ("10:12:17.579") or a date and time ("2024-01-01 10:12:17");
        # Info is whatever follows.
        name, proto, table, state = fields[0:4]
        rest = text.split(None, 4)[4] if len(text.split(None, 4)) > 4 else ""
        since_match = re.match(r"^(\d{4}-\d{2}-\d{2} [\d:.]+|[\d:.]+)\s*(.*)$", rest)
        since, info = (since_match.group(1), since_match.group(2)) if since_match else ("", rest)
        result.append({
            "name": name,
            "proto": proto,
            "table": table,
            "state": state,
            "since": since,
            "info": info.strip(),
        })
    return result


# "198.51.100.0/24      unicast [pop 10:18:00.510] * (100) [AS64500i]"; the network is left
# out on the second and later routes for the same network.
_ROUTE_LINE = re.compile(
    r"^(?P<net>[0-9a-fA-F.:]+/\d+)?\s*(?P<kind>unicast|blackhole|unreachable|prohibit)?\s*"
    r"\[(?P<proto>\S+) (?P<since>[^\]]*?)(?: from (?P<from>\S+))?\]\s*(?P<primary>\*)?\s*"
    r"\((?P<pref>\d+)(?:/\S+)?\)\s*(?:\[(?P<origin>[^\]]*)\])?"
)


def parse_routes(reply):
    """Routes of ``show route ... all``: 1007 route lines, 1008/1012 attribute lines.

    Each route: network, type (unicast/blackhole/...), protocol, primary, preference, and
    attributes (``BGP.as_path``, ``BGP.community`` ...) as strings; ``as_path`` as a list of
    ints and ``communities`` as a list of "asn:value" strings when present.
    """
    routes = []
    table = None
    current = None
    network = None
    for code, text in reply.lines:
        if code == "1007":
            if text.startswith("Table "):
                table = text[len("Table "):].rstrip(":")
                continue
            stripped = text.strip()
            if stripped.startswith("via ") or stripped.startswith("dev "):
                if current is not None:
                    current["nexthops"].append(stripped)
                continue
            match = _ROUTE_LINE.match(stripped)
            if not match:
                continue
            if match.group("net"):
                network = match.group("net")
            current = {
                "network": network,
                "table": table,
                "type": match.group("kind") or "unicast",
                "protocol": match.group("proto"),
                "primary": bool(match.group("primary")),
                "preference": int(match.group("pref")),
                "nexthops": [],
                "attributes": {},
                "as_path": [],
                "communities": [],
            }
            routes.append(current)
        elif code in ("1008", "1012") and current is not None:
            key, sep, value = text.strip().partition(":")
            if not sep:
                continue
            key = key.strip()
            value = value.strip()
            current["attributes"][key] = value
            if key == "BGP.as_path":
                current["as_path"] = [int(asn) for asn in re.findall(r"\d+", value)]
            elif key == "BGP.community":
                current["communities"] = ["%s:%s" % pair for pair in re.findall(r"\((\d+),(\d+)\)", value)]
    return routes
