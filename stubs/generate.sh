#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
# Regenerate stubs/pycriu/rpc_pb2.pyi from the rpc.proto descriptor that Debian's
# pycriu carries (CRIU's source is not at hand). Needs protoc 3.21 and Debian's
# python3 with the criu package installed.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 - "$tmp/rpc.desc" <<'PY'
import sys
import pycriu.rpc_pb2 as rpc
from google.protobuf import descriptor_pb2
proto = descriptor_pb2.FileDescriptorProto()
rpc.DESCRIPTOR.CopyToProto(proto)
with open(sys.argv[1], "wb") as f:
    f.write(descriptor_pb2.FileDescriptorSet(file=[proto]).SerializeToString())
PY
protoc --descriptor_set_in="$tmp/rpc.desc" --pyi_out="$tmp" rpc.proto
# Two edits for mypy: types-protobuf 4.21's EnumTypeWrapper is no metaclass mypy
# accepts (the enums stay ints), and criu_opts has a field named like the message
# type inherit_fd, which shadows it inside the class (an alias names the type).
sed -e 's/, metaclass=_enum_type_wrapper.EnumTypeWrapper//' \
    -e 's/\[inherit_fd\]/[_inherit_fd]/' -e 's/_Union\[inherit_fd, /_Union[_inherit_fd, /' \
    "$tmp/rpc_pb2.pyi" >pycriu/rpc_pb2.pyi
printf '\n_inherit_fd = inherit_fd\n' >>pycriu/rpc_pb2.pyi
