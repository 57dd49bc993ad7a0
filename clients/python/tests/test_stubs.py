"""The committed stubs describe the same protocol as proto/avlm.proto.

The reference is the descriptor set the Rust build makes from the proto:
the Rust integration test (tests/tests/python_client.rs) writes it to a file
and names it in AVLM_DESCRIPTOR_SET. Run by hand, the test skips without it.
Regenerate the stubs with clients/python/generate.sh when it fails.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from google.protobuf import descriptor_pb2  # noqa: E402

from avlm_client import avlm_pb2  # noqa: E402


def normalised(fd: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """Without what protoc adds or drops depending on the output: comments
    and json_name."""
    out = descriptor_pb2.FileDescriptorProto()
    out.CopyFrom(fd)
    out.ClearField("source_code_info")

    def strip(messages):
        for m in messages:
            for f in m.field:
                f.ClearField("json_name")
            strip(m.nested_type)

    strip(out.message_type)
    return out


class Stubs(unittest.TestCase):
    def test_stubs_match_the_proto(self):
        path = os.environ.get("AVLM_DESCRIPTOR_SET")
        if not path:
            self.skipTest("AVLM_DESCRIPTOR_SET not set (the Rust test sets it)")
        with open(path, "rb") as f:
            reference = descriptor_pb2.FileDescriptorSet.FromString(f.read())
        [want] = [fd for fd in reference.file if fd.name == "avlm.proto"]
        got = descriptor_pb2.FileDescriptorProto.FromString(avlm_pb2.DESCRIPTOR.serialized_pb)
        self.assertEqual(
            normalised(got),
            normalised(want),
            "clients/python/src/avlm_client/avlm_pb2.py is out of date: run clients/python/generate.sh",
        )

    def test_service_methods(self):
        service = avlm_pb2.DESCRIPTOR.services_by_name["Avlm"]
        self.assertEqual([m.name for m in service.methods], ["Stream", "GetInfo"])


if __name__ == "__main__":
    unittest.main()
