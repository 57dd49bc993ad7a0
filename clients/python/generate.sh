#!/usr/bin/env bash
# Regenerates src/avlm_client/avlm_pb2.py and avlm_pb2_grpc.py from
# proto/avlm.proto. The stubs are committed so that installing or testing the
# client needs only grpcio and protobuf; run this after changing the proto.
#
# grpcio-tools is pinned to grpcio's release line (1.85): its protoc (35.x)
# writes gencode for protobuf 7.x, the runtime .avlm/venv has. It is
# installed into its own environment (.avlm/grpc-tools-venv) unless
# $GRPC_TOOLS_PYTHON names a Python that already has grpc_tools.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$here/src/avlm_client"

py="${GRPC_TOOLS_PYTHON:-}"
if [[ -z "$py" ]]; then
  venv="$root/.avlm/grpc-tools-venv"
  py="$venv/bin/python"
  if ! "$py" -c "import grpc_tools" 2>/dev/null; then
    python3 -m venv "$venv"
    "$py" -m pip install -q --disable-pip-version-check "grpcio-tools==1.85.1"
  fi
fi

"$py" -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$out" --grpc_python_out="$out" "$root/proto/avlm.proto"
# protoc writes a top-level import; the stubs live inside the package.
sed -i 's/^import avlm_pb2 as avlm__pb2$/from . import avlm_pb2 as avlm__pb2/' "$out/avlm_pb2_grpc.py"
grep -q '^from \. import avlm_pb2 as avlm__pb2$' "$out/avlm_pb2_grpc.py"
echo "generated $out/avlm_pb2.py and $out/avlm_pb2_grpc.py with $("$py" -m grpc_tools.protoc --version)"
