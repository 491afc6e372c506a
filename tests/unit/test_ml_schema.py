"""The feature schema derived from `qsc.ml.v1.HostFeature`: number order, published features in
place, every feature with a domain, version 1; a malformed enum is refused."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import EnumDescriptor

from ml.schema import DOMAINS, FEATURES, SCHEMA_VERSION, check_feature_names, feature_names
from qsc.ml.v1 import host_features_pb2

# Version 1 as first published: models trained on it name these, at these positions.
PUBLISHED_V1 = (
    "cpu_percent",
    "memory_percent",
    "network_bytes_out",
    "network_bytes_in",
    "failed_logins",
    "process_count",
    "exec_rate",
    "distinct_destination_addresses",
    "file_changes",
)


def _enum(*values: tuple[str, int]) -> descriptor_pb2.EnumDescriptorProto:
    proto = descriptor_pb2.EnumDescriptorProto(name="HostFeature")
    for name, number in values:
        proto.value.add(name=name, number=number)
    return proto


def _descriptor(enum: descriptor_pb2.EnumDescriptorProto, package: str) -> EnumDescriptor:
    pool = descriptor_pool.DescriptorPool()
    file = descriptor_pb2.FileDescriptorProto(name=f"{package}.proto", package=package)
    file.enum_type.append(enum)
    pool.Add(file)
    return pool.FindEnumTypeByName(f"{package}.HostFeature")


def test_features_follow_the_enum_numbers() -> None:
    values = host_features_pb2.HostFeature.DESCRIPTOR.values_by_number
    assert len(FEATURES) == len(values) - 1
    for number, name in enumerate(FEATURES, start=1):
        assert values[number].name == f"HOST_FEATURE_{name.upper()}"


def test_published_features_keep_their_positions() -> None:
    assert FEATURES[: len(PUBLISHED_V1)] == PUBLISHED_V1
    assert SCHEMA_VERSION == 1
    assert check_feature_names(FEATURES) == FEATURES


def test_every_feature_has_a_domain() -> None:
    assert set(DOMAINS) == set(FEATURES)


def test_order_is_by_number_not_declaration() -> None:
    enum = _enum(
        ("HOST_FEATURE_UNSPECIFIED", 0),
        ("HOST_FEATURE_LATER", 2),
        ("HOST_FEATURE_FIRST", 1),
    )
    assert feature_names(_descriptor(enum, "t.order")) == ("first", "later")


def test_a_value_without_the_prefix_is_refused() -> None:
    enum = _enum(("HOST_FEATURE_UNSPECIFIED", 0), ("CPU_PERCENT", 1))
    with pytest.raises(ValueError, match=r"t\.prefix\.HostFeature\.CPU_PERCENT lacks"):
        feature_names(_descriptor(enum, "t.prefix"))
