#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
# Regenerate assoc_state_pb2.py and its type stub (.pyi) from assoc_state.proto.
# Needs protoc 3.21 (Debian 12: protobuf-compiler), the match of the pinned protobuf runtime.
# Run from anywhere; the module path inside the generated code is sctp_repair/.
set -eu
cd "$(dirname "$0")/.."
protoc --version
protoc -I. --python_out=. --pyi_out=. sctp_repair/assoc_state.proto
