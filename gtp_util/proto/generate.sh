#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
# Regenerate gtp_image_pb2.py (and its type stub, .pyi) from gtp_image.proto. Needs protoc 3.21
# (Debian 12: apt-get install protobuf-compiler), the match of the protobuf 4.21
# runtime the project pins.
set -eu
cd "$(dirname "$0")"
protoc --version
protoc -I. --python_out=. --pyi_out=. gtp_image.proto
