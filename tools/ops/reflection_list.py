"""Lists a server's services through gRPC server reflection as Python's
grpcio-reflection client does it: it speaks v1alpha only (as do Postman,
Evans and older grpcurl), then resolves the avlm service's descriptor.

usage: reflection_list.py HOST:PORT
Prints one service name a line, then the avlm service's methods; exits 1
when reflection fails.
"""
import sys

import grpc


def main() -> int:
    target = sys.argv[1]
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        try:
            for response in stub.ServerReflectionInfo(iter([request]), timeout=20):
                if response.HasField("error_response"):
                    print(response.error_response.error_message, file=sys.stderr)
                    return 1
                for s in response.list_services_response.service:
                    print(s.name)
        except grpc.RpcError as e:
            print(f"{e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    # The descriptor database the Python ecosystem builds on must resolve
    # the avlm service's full descriptor too.
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    from google.protobuf.descriptor_pool import DescriptorPool

    with grpc.insecure_channel(target) as channel:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName("avlm.v1.Avlm")
        print("methods:", ",".join(m.name for m in service.methods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
