"""A protoset (FileDescriptorSet) for ghz, built from the Python stubs we already load.

ghz needs the service's descriptors. Building them from the imported modules
(ours, and Envoy's from xds-protos) keeps one source of truth and needs no
protoc run or server reflection.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor


def write_protoset(files: list[FileDescriptor], dest: Path) -> Path:
    """Write ``files`` and everything they import, dependencies first."""
    fds = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(fd: FileDescriptor) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        fds.file.append(proto)

    for f in files:
        add(f)
    dest.write_bytes(fds.SerializeToString())
    return dest
