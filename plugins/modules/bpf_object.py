#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: bpf_object
short_description: Compile a BPF C program into an object file with clang, only when its inputs changed
version_added: "0.1.0"
description:
  - Compiles one C file of the collection's C(bpf/) folder (or any BPF C source) into an ELF
    object with C(clang -target bpf), the object that M(anycast.edge.xdp_program) and
    M(anycast.edge.tc_program) load.
  - Idempotent by a SHA-256 of everything that decides the object's contents - the source, every
    header it includes (listed by C(clang -M), system headers such as C(bpf/bpf_helpers.h)
    included), the compiler flags and C(clang --version). The hash is stored beside the object in
    C(<dest>.sha256) together with the object's own SHA-256; the object is rebuilt when either
    differs, so an edited header, a changed flag, a compiler upgrade or a replaced object all
    trigger a rebuild and nothing else does.
  - "Meant to run once on the controller (C(delegate_to: localhost), C(run_once)) so that the POPs
    need no compiler; it runs on any host that has clang."
  - A compile error fails the task with clang's own message; the previous object (if any) is
    left in place.
  - Program tags are computed by the kernel when a program is loaded, so this module returns the
    programs' names and ELF sections; M(anycast.edge.xdp_program) and M(anycast.edge.tc_program)
    return the tag of what they attach.
author:
  - anycast.edge maintainers (!UNKNOWN)
requirements:
  - clang with the BPF target (Debian package C(clang))
  - the libbpf headers the source includes (Debian package C(libbpf-dev))
  - libbpf 1.x (C(libbpf.so.1)) to list the object's programs and maps (optional - without it the
    lists are empty and a warning says why)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Computes the hash (runs C(clang -M) and C(clang --version)) and reports whether the object would be rebuilt; compiles nothing.
  diff_mode:
    support: full
    details: Shows the stored and the new input hash.
  platform:
    platforms: posix
options:
  src:
    description: The C source to compile, for example C(bpf/xdp_edge.c).
    type: path
    required: true
  dest:
    description:
      - Where to write the object, for example C(build/xdp_edge.o). Missing parent folders are
        created. The stamp C(<dest>.sha256) is written beside it.
    type: path
    required: true
  include_dirs:
    description:
      - Folders passed to clang with C(-I), in order.
      - Default - the C(include) folder beside O(src) (C(bpf/include) for C(bpf/xdp_edge.c)), the
        same as the Makefile's C(-I bpf/include).
    type: list
    elements: path
  extra_cflags:
    description:
      - Flags added after the fixed ones (C(-O2 -g -target bpf -mcpu=v3 -Wall -Werror), the
        Makefile's C(BPF_CFLAGS)), the include folders and C(-idirafter /usr/include/<multiarch>)
        (where the kernel's UAPI headers keep C(asm/*.h)), for example C(-DDEBUG). A later flag
        overrides an earlier one (C(-O3) replaces C(-O2)).
    type: list
    elements: str
    default: []
  clang:
    description: The clang to run - a command name looked up in C(PATH) or a path.
    type: str
    default: clang
"""

EXAMPLES = r"""
- name: Compile the POP program once, on the controller
  anycast.edge.bpf_object:
    src: "{{ playbook_dir }}/../bpf/xdp_edge.c"
    dest: "{{ playbook_dir }}/../build/xdp_edge.o"
  delegate_to: localhost
  run_once: true
  register: xdp_edge_object

- name: A debug build with an extra define and another compiler
  anycast.edge.bpf_object:
    src: bpf/xdp_edge.c
    dest: build/debug/xdp_edge.o
    extra_cflags: [-DEDGE_DEBUG]
    clang: clang-14
"""

RETURN = r"""
path:
  description: Absolute path of the object.
  returned: always
  type: str
  sample: /srv/anycast-edge/build/xdp_edge.o
sha256:
  description: SHA-256 of the object file (null in check mode when it would be rebuilt).
  returned: always
  type: str
  sample: 6f1c0b2e5a0d9c3e5b8f7a1d2c4e6f8091a2b3c4d5e6f708192a3b4c5d6e7f80
inputs_sha256:
  description: SHA-256 of the inputs - sources, headers, flags and compiler version.
  returned: always
  type: str
  sample: 0b7e1f6a2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccdde
command:
  description: The clang command line that compiles (or compiled) the object.
  returned: always
  type: list
  elements: str
  sample: [clang, -O2, -g, -target, bpf, -mcpu=v3, -Wall, -Werror, -I, /srv/bpf/include, -c, /srv/bpf/xdp_edge.c, -o, /srv/build/xdp_edge.o]
clang_version:
  description: First line of C(clang --version).
  returned: always
  type: str
  sample: Debian clang version 14.0.6
dependencies:
  description: Every file the object depends on (the source first, then the headers), as C(clang -M) lists them.
  returned: always
  type: list
  elements: str
  sample: [/srv/bpf/xdp_edge.c, /srv/bpf/include/edge_abi.h, /usr/include/bpf/bpf_helpers.h]
programs:
  description:
    - The object's programs - C function name and ELF section (C(xdp), C(tc) ...). Read with
      libbpf without loading; empty in check mode when the object would be rebuilt.
    - Tags are not here - the kernel computes a tag at load; the attaching modules return it.
  returned: always
  type: list
  elements: dict
  sample: [{name: xdp_edge, section: xdp}]
maps:
  description: Names of the object's maps (libbpf's internal C(.rodata)/C(.bss) maps left out).
  returned: always
  type: list
  elements: str
  sample: [edge_config, edge_services, edge_sources]
"""

import hashlib
import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._bpf import BpfError, BpfObject
from ansible_collections.anycast.edge.plugins.module_utils._loader import file_sha256

# The Makefile's BPF_CFLAGS minus its -I (include folders are a parameter here) and -idirafter;
# tests/integration/test_bpf_object.py checks that the whole command line is the Makefile's.
# -mcpu=v3: the program's exact rate counters use atomic fetch-and-add (BPF ISA v3).
BASE_CFLAGS = ["-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror"]

# Bumped when the way the hash is computed changes, so old stamps never match by accident.
STAMP_FORMAT = 1


def parse_make_dependencies(text):
    """The prerequisites of a ``clang -M`` rule: ``target: a.c b.h \\`` -> [a.c, b.h].

    Make syntax: lines continue with a trailing backslash, spaces inside names are escaped
    as ``\\ ``.
    """
    joined = text.replace("\\\n", " ")
    rule = joined.split(":", 1)[1] if ":" in joined else ""
    names, current, index = [], [], 0
    while index < len(rule):
        char = rule[index]
        if char == "\\" and index + 1 < len(rule) and rule[index + 1] == " ":
            current.append(" ")
            index += 2
            continue
        if char.isspace():
            if current:
                names.append("".join(current))
                current = []
        else:
            current.append(char)
        index += 1
    if current:
        names.append("".join(current))
    return names


class Compiler(object):
    """One clang invocation: its flags, its inputs and the hash of them."""

    def __init__(self, module):
        self.module = module
        params = module.params
        self.src = os.path.abspath(params["src"])
        self.dest = os.path.abspath(params["dest"])
        self.stamp_path = self.dest + ".sha256"
        # clang runs in the source's folder: the debug info records the working folder, and
        # a fixed one keeps the object the same whatever folder Ansible started in.
        self.workdir = os.path.dirname(self.src)
        include_dirs = params["include_dirs"]
        if include_dirs is None:
            include_dirs = [os.path.join(self.workdir, "include")]
        self.include_dirs = [os.path.abspath(path) for path in include_dirs]
        self.clang = self._find_clang(params["clang"])
        self.flags = list(BASE_CFLAGS)
        for path in self.include_dirs:
            self.flags.extend(["-I", path])
        # As the Makefile does: the kernel's UAPI headers keep <asm/*.h> under the multiarch
        # folder, which clang -target bpf does not search by itself (searched last, so no glibc
        # header is preferred over ours).
        multiarch = self._multiarch_include()
        if multiarch:
            self.flags.extend(["-idirafter", multiarch])
        self.flags.extend(params["extra_cflags"])

    def _multiarch_include(self):
        """/usr/include/<multiarch> (x86_64-linux-gnu on Debian amd64), or None if unknown.

        Asked of the clang that compiles first, as the Makefile does: a controller with clang
        alone has neither cc nor dpkg-architecture (dpkg-dev)."""
        for command, argument in ((self.clang, "-print-multiarch"), ("cc", "-print-multiarch"),
                                  ("dpkg-architecture", "-qDEB_HOST_MULTIARCH")):
            binary = self.module.get_bin_path(command) if os.sep not in command else command
            if not binary:
                continue
            rc, out, dummy_err = self.module.run_command([binary, argument])
            folder = os.path.join("/usr/include", out.strip())
            if rc == 0 and out.strip() and os.path.isdir(folder):
                return folder
        return None

    def _find_clang(self, clang):
        if os.sep in clang:
            if not os.access(clang, os.X_OK):
                self.module.fail_json(msg="clang: %s is not an executable file" % clang)
            return os.path.abspath(clang)
        found = self.module.get_bin_path(clang)
        if not found:
            self.module.fail_json(msg="clang: no %r in PATH; install clang (Debian package clang) "
                                      "or set the clang parameter" % clang)
        return found

    def _run(self, argv, what):
        rc, out, err = self.module.run_command(argv, cwd=self.workdir)
        if rc != 0:
            self.module.fail_json(msg="clang failed to %s %s:\n%s" % (what, self.src, err.strip() or out.strip()),
                                  rc=rc, cmd=argv, stdout=out, stderr=err)
        return out

    def version(self):
        return self._run([self.clang, "--version"], "report its version for").strip()

    def dependencies(self):
        """The source and every header it includes, as clang's preprocessor finds them."""
        out = self._run([self.clang] + self.flags + ["-M", self.src], "list the headers of")
        return [os.path.normpath(os.path.join(self.workdir, name))
                for name in parse_make_dependencies(out)]

    def compile_command(self, output):
        return [self.clang] + self.flags + ["-c", self.src, "-o", output]

    def inputs_sha256(self, clang_version, dependencies):
        """Hash of what decides the object: format, compiler, flags, each file and its content."""
        digest = hashlib.sha256()

        def field(label, value):
            data = value.encode("utf-8")
            digest.update(("%s %d\n" % (label, len(data))).encode("ascii"))
            digest.update(data)

        field("format", str(STAMP_FORMAT))
        field("clang", clang_version)
        field("flags", json.dumps(self.flags))
        field("src", self.src)
        for path in dependencies:
            field("file", path)
            field("sha256", file_sha256(path))
        return digest.hexdigest()

    def read_stamp(self):
        try:
            with open(self.stamp_path) as handle:
                stamp = json.load(handle)
        except (IOError, OSError, ValueError):
            return None
        return stamp if isinstance(stamp, dict) else None

    def compile(self):
        """Compile into a temporary file beside dest, then rename it over dest."""
        dest_dir = os.path.dirname(self.dest)
        if not os.path.isdir(dest_dir):
            os.makedirs(dest_dir)
        fd, temporary = tempfile.mkstemp(prefix=".%s." % os.path.basename(self.dest), dir=dest_dir)
        os.close(fd)
        try:
            self._run(self.compile_command(temporary), "compile")
            os.chmod(temporary, 0o644)
            os.rename(temporary, self.dest)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)

    def write_stamp(self, stamp):
        fd, temporary = tempfile.mkstemp(prefix=".%s." % os.path.basename(self.stamp_path),
                                         dir=os.path.dirname(self.stamp_path))
        with os.fdopen(fd, "w") as handle:
            json.dump(stamp, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.chmod(temporary, 0o644)
        os.rename(temporary, self.stamp_path)


def describe_object(module, path):
    """(programs, maps) of the object, read by libbpf without loading anything."""
    try:
        with BpfObject.open(path) as obj:
            programs = [{"name": prog.name, "section": prog.section} for prog in obj.programs()]
            maps = [bpf_map.name for bpf_map in obj.maps()]
    except BpfError as exc:
        module.warn("cannot list the programs and maps of %s with libbpf: %s" % (path, exc))
        return [], []
    return programs, maps


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path", required=True),
            dest=dict(type="path", required=True),
            include_dirs=dict(type="list", elements="path"),
            extra_cflags=dict(type="list", elements="str", default=[]),
            clang=dict(type="str", default="clang"),
        ),
        supports_check_mode=True,
    )
    if not os.path.isfile(module.params["src"]):
        module.fail_json(msg="src: %s is not a file" % module.params["src"])

    compiler = Compiler(module)
    clang_version = compiler.version()
    dependencies = compiler.dependencies()
    inputs_sha256 = compiler.inputs_sha256(clang_version, dependencies)

    stamp = compiler.read_stamp()
    object_sha256 = file_sha256(compiler.dest) if os.path.isfile(compiler.dest) else None
    up_to_date = (stamp is not None and object_sha256 is not None
                  and stamp.get("inputs_sha256") == inputs_sha256
                  and stamp.get("object_sha256") == object_sha256)

    result = dict(
        changed=not up_to_date,
        path=compiler.dest,
        inputs_sha256=inputs_sha256,
        command=compiler.compile_command(compiler.dest),
        clang_version=clang_version.splitlines()[0],
        dependencies=dependencies,
    )
    if module._diff:
        result["diff"] = dict(
            before={"inputs_sha256": stamp.get("inputs_sha256") if stamp else None,
                    "object_sha256": object_sha256},
            after={"inputs_sha256": inputs_sha256,
                   "object_sha256": object_sha256 if up_to_date else "(rebuilt)"},
            before_header=compiler.stamp_path, after_header=compiler.stamp_path,
        )

    if not up_to_date and module.check_mode:
        result.update(sha256=None, programs=[], maps=[])
        module.exit_json(**result)

    if not up_to_date:
        compiler.compile()
        object_sha256 = file_sha256(compiler.dest)
        compiler.write_stamp({
            "format": STAMP_FORMAT,
            "inputs_sha256": inputs_sha256,
            "object_sha256": object_sha256,
            "clang_version": clang_version.splitlines()[0],
            "command": result["command"],
            "dependencies": dependencies,
        })

    programs, maps = describe_object(module, compiler.dest)
    result.update(sha256=object_sha256, programs=programs, maps=maps)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
