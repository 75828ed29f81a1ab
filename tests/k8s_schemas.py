"""Test-side schemas of the custom resources in the manifests: the fields their operators
document (apiVersion, kind, required spec fields, the types and values of the fields used),
closed (no unknown field) where the manifests rely on a field being understood. No network
here to fetch the operators' CRDs; these follow their reference pages:

- KEDA ScaledObject (keda.sh/v1alpha1): keda.sh/docs/2.16/reference/scaledobject-spec,
  scalers "prometheus" and "cron" (trigger metadata values are strings).
- Prometheus Operator (monitoring.coreos.com/v1) ServiceMonitor and PrometheusRule: the API
  reference of prometheus-operator.
- Strimzi (kafka.strimzi.io/v1beta2) KafkaTopic and KafkaUser: the Strimzi API reference.
- CloudNativePG (postgresql.cnpg.io/v1) Cluster: the CloudNativePG API reference.
- cert-manager (cert-manager.io/v1) Issuer and Certificate: cert-manager's API reference.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def closed(required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    """An object with exactly these properties (JSON keys that are not identifiers, such as
    ``for``, go through ``**{...}``)."""
    schema: Schema = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def string(pattern: str) -> Schema:
    return {"type": "string", "pattern": pattern}


def integer(minimum: int = 0, maximum: int | None = None) -> Schema:
    schema: Schema = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def enum(*values: str) -> Schema:
    return {"enum": list(values)}


TEXT: Schema = {"type": "string"}
BOOLEAN: Schema = {"type": "boolean"}
DURATION = string(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w|y))+$")
GO_DURATION = string(r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
QUANTITY = string(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
NUMBER_STRING = string(r"^[0-9]+(\.[0-9]+)?$")
CRON = string(r"^(\S+\s+){4}\S+$")
STRING_MAP: Schema = {"type": "object", "additionalProperties": TEXT}
NAME: Schema = {**string(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"), "maxLength": 253}
RESOURCES = closed(requests=STRING_MAP, limits=STRING_MAP)
VOLUME = closed(("size",), size=QUANTITY, storageClass=TEXT)


def _resource(
    api_version: str, kind: str, spec: Schema, *, labels_required: tuple[str, ...] = ()
) -> Schema:
    labels = {**STRING_MAP, "required": list(labels_required)} if labels_required else STRING_MAP
    metadata = {"type": "object", "required": ["name", *(["labels"] if labels_required else [])],
                "properties": {"name": NAME, "labels": labels}}  # fmt: skip
    return closed(
        ("apiVersion", "kind", "metadata", "spec"),
        apiVersion={"const": api_version},
        kind={"const": kind},
        metadata=metadata,
        spec=spec,
    )


# ---- KEDA ---------------------------------------------------------------------------------

_HPA_POLICY = closed(
    ("type", "value", "periodSeconds"),
    type=enum("Pods", "Percent"),
    value=integer(1),
    periodSeconds=integer(1, 1800),
)
_HPA_RULES = closed(
    stabilizationWindowSeconds=integer(0, 3600),
    selectPolicy=enum("Max", "Min", "Disabled"),
    policies={"type": "array", "items": _HPA_POLICY},
)


def _trigger(kind: str, metadata: Schema) -> Schema:
    return {"type": "object", "required": ["type", "metadata"],
            "properties": {"type": {"const": kind}, "metadata": metadata}}  # fmt: skip


_PROMETHEUS_TRIGGER = _trigger(
    "prometheus",
    closed(
        ("serverAddress", "query", "threshold"),
        serverAddress=string(r"^https?://"),
        query=TEXT,
        threshold=NUMBER_STRING,
        activationThreshold=NUMBER_STRING,
        ignoreNullValues=enum("true", "false"),
        unsafeSsl=enum("true", "false"),
        namespace=TEXT,
    ),
)
_CRON_TRIGGER = _trigger(
    "cron",
    closed(
        ("timezone", "start", "end", "desiredReplicas"),
        timezone=string(r"^[A-Za-z_]+(/[A-Za-z_]+)*$"),
        start=CRON,
        end=CRON,
        desiredReplicas=string(r"^[0-9]+$"),
    ),
)
SCALED_OBJECT = _resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    closed(
        ("scaleTargetRef", "triggers"),
        scaleTargetRef=closed(("name",), name=NAME, apiVersion=TEXT, kind=TEXT),
        pollingInterval=integer(1),
        cooldownPeriod=integer(0),
        minReplicaCount=integer(0),
        maxReplicaCount=integer(1),
        fallback=closed(("failureThreshold", "replicas"), failureThreshold=integer(1),
                        replicas=integer(1)),
        advanced=closed(
            horizontalPodAutoscalerConfig=closed(
                name=TEXT, behavior=closed(scaleUp=_HPA_RULES, scaleDown=_HPA_RULES)
            )
        ),
        triggers={"type": "array", "minItems": 1,
                  "items": {"oneOf": [_PROMETHEUS_TRIGGER, _CRON_TRIGGER]}},
    ),
)  # fmt: skip

# ---- Prometheus Operator ------------------------------------------------------------------

SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    closed(
        ("selector", "endpoints"),
        jobLabel=TEXT,
        selector=closed(("matchLabels",), matchLabels=STRING_MAP),
        endpoints={
            "type": "array",
            "minItems": 1,
            "items": closed(
                ("port",), port=TEXT, path=string("^/"), interval=DURATION,
                scrapeTimeout=DURATION,
            ),
        },
    ),
)  # fmt: skip
_RULE = {
    **closed(
        ("expr",),
        record=TEXT,
        alert=TEXT,
        expr=TEXT,
        labels=STRING_MAP,
        annotations=STRING_MAP,
        **{"for": DURATION},
    ),
    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
}
PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    closed(
        ("groups",),
        groups={
            "type": "array",
            "items": closed(
                ("name", "rules"), name=TEXT, interval=DURATION,
                rules={"type": "array", "items": _RULE},
            ),
        },
    ),
)  # fmt: skip

# ---- Strimzi ------------------------------------------------------------------------------

KAFKA_TOPIC = _resource(
    "kafka.strimzi.io/v1beta2",
    "KafkaTopic",
    closed(
        ("partitions", "replicas"),
        topicName=string(r"^[A-Za-z0-9._-]{1,249}$"),
        partitions=integer(1),
        replicas=integer(1, 32767),
        config={"type": "object",
                "additionalProperties": {"type": ["string", "integer", "number", "boolean"]}},
    ),
    labels_required=("strimzi.io/cluster",),
)  # fmt: skip
KAFKA_ACL_OPERATIONS = ("Read", "Write", "Create", "Delete", "Alter", "Describe",
                        "ClusterAction", "AlterConfigs", "DescribeConfigs", "IdempotentWrite",
                        "All")  # fmt: skip
_ACL = closed(
    ("resource", "operations"),
    resource=closed(
        ("type",),
        type=enum("topic", "group", "cluster", "transactionalId"),
        name=TEXT,
        patternType=enum("literal", "prefix"),
    ),
    operations={"type": "array", "minItems": 1, "items": enum(*KAFKA_ACL_OPERATIONS)},
    host=TEXT,
)
KAFKA_USER = _resource(
    "kafka.strimzi.io/v1beta2",
    "KafkaUser",
    closed(
        authentication={"type": "object", "required": ["type"],
                        "properties": {"type": enum("tls", "tls-external", "scram-sha-512")}},
        authorization=closed(("type", "acls"), type={"const": "simple"},
                             acls={"type": "array", "items": _ACL}),
    ),
    labels_required=("strimzi.io/cluster",),
)  # fmt: skip

# ---- CloudNativePG ------------------------------------------------------------------------

CNPG_CLUSTER = _resource(
    "postgresql.cnpg.io/v1",
    "Cluster",
    closed(
        ("instances", "storage"),
        instances=integer(1),
        imageName=TEXT,
        primaryUpdateStrategy=enum("unsupervised", "supervised"),
        minSyncReplicas=integer(0),
        maxSyncReplicas=integer(0),
        bootstrap=closed(initdb=closed(("database", "owner"), database=TEXT, owner=TEXT)),
        postgresql=closed(parameters=STRING_MAP),
        storage=VOLUME,
        walStorage=VOLUME,
        resources=RESOURCES,
        monitoring=closed(enablePodMonitor=BOOLEAN),
    ),
)

# ---- cert-manager -------------------------------------------------------------------------

CERTIFICATE = _resource(
    "cert-manager.io/v1",
    "Certificate",
    {
        **closed(
            ("secretName", "issuerRef"),
            secretName=NAME,
            issuerRef=closed(("name",), name=NAME, kind=enum("Issuer", "ClusterIssuer"),
                             group=TEXT),
            isCA=BOOLEAN,
            commonName={"type": "string", "maxLength": 64},
            dnsNames={"type": "array", "minItems": 1, "items": TEXT},
            duration=GO_DURATION,
            renewBefore=GO_DURATION,
            usages={"type": "array", "items": enum(
                "server auth", "client auth", "digital signature", "key encipherment",
                "cert sign")},
            privateKey=closed(algorithm=enum("RSA", "ECDSA", "Ed25519"),
                              size={"type": "integer"},
                              rotationPolicy=enum("Never", "Always")),
        ),
        "anyOf": [{"required": ["dnsNames"]}, {"required": ["commonName"]}],
    },
)  # fmt: skip
ISSUER = _resource(
    "cert-manager.io/v1",
    "Issuer",
    {
        **closed(
            selfSigned={"type": "object", "additionalProperties": False},
            ca=closed(("secretName",), secretName=NAME),
        ),
        "minProperties": 1,
        "maxProperties": 1,
    },
)

CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): KAFKA_TOPIC,
    ("kafka.strimzi.io/v1beta2", "KafkaUser"): KAFKA_USER,
    ("postgresql.cnpg.io/v1", "Cluster"): CNPG_CLUSTER,
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
    ("cert-manager.io/v1", "Issuer"): ISSUER,
}
"""(apiVersion, kind) -> JSON schema of the whole object."""
CUSTOM_KINDS = {kind for _, kind in CUSTOM}
