"""A local Apache Kafka (KRaft) for development, the demo and the tests: one broker or a cluster."""

from evcharge.devtools.kafka.cluster import (
    ClusterNode,
    ClusterStartResult,
    ClusterStatus,
    LocalCluster,
    NodeSpec,
    NodeStatus,
    PartitionState,
)
from evcharge.devtools.kafka.fetch import JAVA_MISSING, KAFKA_VERSION, MAVEN_MISSING, cache_dir, fetch_kafka
from evcharge.devtools.kafka.local import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    BrokerStatus,
    LocalBroker,
    StartResult,
    default_data_dir,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "JAVA_MISSING",
    "KAFKA_VERSION",
    "MAVEN_MISSING",
    "BrokerStatus",
    "ClusterNode",
    "ClusterStartResult",
    "ClusterStatus",
    "LocalBroker",
    "LocalCluster",
    "NodeSpec",
    "NodeStatus",
    "PartitionState",
    "StartResult",
    "cache_dir",
    "default_data_dir",
    "fetch_kafka",
]
