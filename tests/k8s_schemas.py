"""Test-side schemas of the custom resources in the manifests: the fields their operators
document (apiVersion, kind, required spec fields, the types and values of the fields used),
strict where the manifests rely on a field being understood. No network here to fetch the
operators' CRDs; these follow their reference pages:

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

DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w|y))+$"}
GO_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"}
QUANTITY = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"requests": STRING_MAP, "limits": STRING_MAP},
}


def _resource(api_version: str, kind: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": NAME, "labels": STRING_MAP},
    }
    metadata["properties"].update(meta.pop("metadata_properties", {}))
    metadata["required"] += meta.pop("metadata_required", [])
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": metadata,
            "spec": spec,
        },
    }


STRIMZI_CLUSTER = {
    "metadata_properties": {
        "labels": {
            "type": "object",
            "required": ["strimzi.io/cluster"],
            "additionalProperties": {"type": "string"},
        }
    },
    "metadata_required": ["labels"],
}

_HPA_POLICY = {
    "type": "object",
    "required": ["type", "value", "periodSeconds"],
    "additionalProperties": False,
    "properties": {
        "type": {"enum": ["Pods", "Percent"]},
        "value": {"type": "integer", "minimum": 1},
        "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
    },
}
_HPA_RULES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {"type": "array", "items": _HPA_POLICY},
    },
}
_PROMETHEUS_TRIGGER = {
    "type": "object",
    "required": ["type", "metadata"],
    "properties": {
        "type": {"const": "prometheus"},
        "metadata": {
            "type": "object",
            "required": ["serverAddress", "query", "threshold"],
            "additionalProperties": False,
            "properties": {
                "serverAddress": {"type": "string", "pattern": r"^https?://"},
                "query": {"type": "string"},
                "threshold": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
                "activationThreshold": {"type": "string"},
                "ignoreNullValues": {"enum": ["true", "false"]},
                "unsafeSsl": {"enum": ["true", "false"]},
                "namespace": {"type": "string"},
            },
        },
    },
}
_CRON_TRIGGER = {
    "type": "object",
    "required": ["type", "metadata"],
    "properties": {
        "type": {"const": "cron"},
        "metadata": {
            "type": "object",
            "required": ["timezone", "start", "end", "desiredReplicas"],
            "additionalProperties": False,
            "properties": {
                "timezone": {"type": "string", "pattern": r"^[A-Za-z_]+(/[A-Za-z_]+)*$"},
                "start": {"type": "string", "pattern": r"^(\S+\s+){4}\S+$"},
                "end": {"type": "string", "pattern": r"^(\S+\s+){4}\S+$"},
                "desiredReplicas": {"type": "string", "pattern": r"^[0-9]+$"},
            },
        },
    },
}

SCALED_OBJECT = _resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    {
        "type": "object",
        "required": ["scaleTargetRef", "triggers"],
        "additionalProperties": False,
        "properties": {
            "scaleTargetRef": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": NAME,
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                },
            },
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "fallback": {
                "type": "object",
                "required": ["failureThreshold", "replicas"],
                "additionalProperties": False,
                "properties": {
                    "failureThreshold": {"type": "integer", "minimum": 1},
                    "replicas": {"type": "integer", "minimum": 1},
                },
            },
            "advanced": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "horizontalPodAutoscalerConfig": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "behavior": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"scaleUp": _HPA_RULES, "scaleDown": _HPA_RULES},
                            },
                        },
                    },
                },
            },
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {"oneOf": [_PROMETHEUS_TRIGGER, _CRON_TRIGGER]},
            },
        },
    },
)

SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    {
        "type": "object",
        "required": ["selector", "endpoints"],
        "additionalProperties": False,
        "properties": {
            "jobLabel": {"type": "string"},
            "selector": {
                "type": "object",
                "required": ["matchLabels"],
                "additionalProperties": False,
                "properties": {"matchLabels": STRING_MAP},
            },
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["port"],
                    "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "interval": DURATION,
                        "scrapeTimeout": DURATION,
                    },
                },
            },
        },
    },
)

PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    {
        "type": "object",
        "required": ["groups"],
        "additionalProperties": False,
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "rules"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "interval": DURATION,
                        "rules": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["expr"],
                                "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                                "additionalProperties": False,
                                "properties": {
                                    "record": {"type": "string"},
                                    "alert": {"type": "string"},
                                    "expr": {"type": "string"},
                                    "for": DURATION,
                                    "labels": STRING_MAP,
                                    "annotations": STRING_MAP,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
)

_SCALAR = {"type": ["string", "integer", "number", "boolean"]}
KAFKA_TOPIC = _resource(
    "kafka.strimzi.io/v1beta2",
    "KafkaTopic",
    {
        "type": "object",
        "required": ["partitions", "replicas"],
        "additionalProperties": False,
        "properties": {
            "topicName": {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,249}$"},
            "partitions": {"type": "integer", "minimum": 1},
            "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
            "config": {"type": "object", "additionalProperties": _SCALAR},
        },
    },
    **STRIMZI_CLUSTER,
)

KAFKA_ACL_OPERATIONS = [
    "Read",
    "Write",
    "Create",
    "Delete",
    "Alter",
    "Describe",
    "ClusterAction",
    "AlterConfigs",
    "DescribeConfigs",
    "IdempotentWrite",
    "All",
]
KAFKA_USER = _resource(
    "kafka.strimzi.io/v1beta2",
    "KafkaUser",
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "authentication": {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"enum": ["tls", "tls-external", "scram-sha-512"]}},
            },
            "authorization": {
                "type": "object",
                "required": ["type", "acls"],
                "additionalProperties": False,
                "properties": {
                    "type": {"const": "simple"},
                    "acls": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["resource", "operations"],
                            "additionalProperties": False,
                            "properties": {
                                "resource": {
                                    "type": "object",
                                    "required": ["type"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "type": {
                                            "enum": ["topic", "group", "cluster", "transactionalId"]
                                        },
                                        "name": {"type": "string"},
                                        "patternType": {"enum": ["literal", "prefix"]},
                                    },
                                },
                                "operations": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {"enum": KAFKA_ACL_OPERATIONS},
                                },
                                "host": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
    **STRIMZI_CLUSTER,
)

CNPG_CLUSTER = _resource(
    "postgresql.cnpg.io/v1",
    "Cluster",
    {
        "type": "object",
        "required": ["instances", "storage"],
        "additionalProperties": False,
        "properties": {
            "instances": {"type": "integer", "minimum": 1},
            "imageName": {"type": "string"},
            "primaryUpdateStrategy": {"enum": ["unsupervised", "supervised"]},
            "minSyncReplicas": {"type": "integer", "minimum": 0},
            "maxSyncReplicas": {"type": "integer", "minimum": 0},
            "bootstrap": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "initdb": {
                        "type": "object",
                        "required": ["database", "owner"],
                        "additionalProperties": False,
                        "properties": {"database": {"type": "string"}, "owner": {"type": "string"}},
                    },
                },
            },
            "postgresql": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"parameters": STRING_MAP},
            },
            "storage": {
                "type": "object",
                "required": ["size"],
                "additionalProperties": False,
                "properties": {"size": QUANTITY, "storageClass": {"type": "string"}},
            },
            "walStorage": {
                "type": "object",
                "required": ["size"],
                "additionalProperties": False,
                "properties": {"size": QUANTITY, "storageClass": {"type": "string"}},
            },
            "resources": RESOURCES,
            "monitoring": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"enablePodMonitor": {"type": "boolean"}},
            },
        },
    },
)

_ISSUER_REF = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": NAME,
        "kind": {"enum": ["Issuer", "ClusterIssuer"]},
        "group": {"type": "string"},
    },
}
CERTIFICATE = _resource(
    "cert-manager.io/v1",
    "Certificate",
    {
        "type": "object",
        "required": ["secretName", "issuerRef"],
        "anyOf": [{"required": ["dnsNames"]}, {"required": ["commonName"]}],
        "additionalProperties": False,
        "properties": {
            "secretName": NAME,
            "issuerRef": _ISSUER_REF,
            "isCA": {"type": "boolean"},
            "commonName": {"type": "string", "maxLength": 64},
            "dnsNames": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "duration": GO_DURATION,
            "renewBefore": GO_DURATION,
            "usages": {
                "type": "array",
                "items": {
                    "enum": [
                        "server auth",
                        "client auth",
                        "digital signature",
                        "key encipherment",
                        "cert sign",
                    ]
                },
            },
            "privateKey": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                    "size": {"type": "integer"},
                    "rotationPolicy": {"enum": ["Never", "Always"]},
                },
            },
        },
    },
)

ISSUER = _resource(
    "cert-manager.io/v1",
    "Issuer",
    {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
        "properties": {
            "selfSigned": {"type": "object", "additionalProperties": False},
            "ca": {
                "type": "object",
                "required": ["secretName"],
                "additionalProperties": False,
                "properties": {"secretName": NAME},
            },
        },
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
