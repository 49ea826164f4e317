"""Would these NetworkPolicies let a connection through? The rules of networking.k8s.io/v1 for the selectors our
manifests use (matchLabels, namespaceSelector on kubernetes.io/metadata.name, ports by number or name), so tests
can ask about connections between pods of rendered manifests instead of comparing selector strings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pod:
    """One end of a connection: its namespace, labels and named container ports."""

    namespace: str
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """A label selector with matchLabels only (what our manifests use); an empty selector selects everything."""
    return set(selector) <= {"matchLabels"} and selector.get("matchLabels", {}).items() <= labels.items()


def peer_matches(peer: dict, policy_namespace: str, other: Pod) -> bool:
    namespace_ok = (
        selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": other.namespace})
        if "namespaceSelector" in peer
        else other.namespace == policy_namespace
    )
    pod_ok = selects(peer.get("podSelector", {}), other.labels)
    return "ipBlock" not in peer and namespace_ok and pod_ok


def port_matches(rule_ports: list[dict] | None, port: int, destination: Pod) -> bool:
    if not rule_ports:
        return True
    return any(destination.ports.get(p["port"], p["port"]) == port for p in rule_ports)


def allows(policies: list[dict], direction: str, pod: Pod, other: Pod, port: int) -> bool:
    """Whether `pod`'s policies admit traffic in `direction` ("Ingress": from `other`; "Egress": to `other`) on
    `port` of the destination. A pod no policy of that direction selects is open."""
    peers_key, destination = ("from", pod) if direction == "Ingress" else ("to", other)
    rules_key = direction.lower()
    applicable = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and direction in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], pod.labels)
    ]
    if not applicable:
        return True
    return any(
        port_matches(rule.get("ports"), port, destination)
        and (
            peers_key not in rule
            or any(peer_matches(peer, p["metadata"]["namespace"], other) for peer in rule[peers_key])
        )
        for p in applicable
        for rule in p["spec"].get(rules_key, [])
    )


def connects(policies: list[dict], source: Pod, destination: Pod, port: int) -> bool:
    """Both ends agree: the source may send (egress) and the destination may receive (ingress)."""
    return allows(policies, "Egress", source, destination, port) and allows(
        policies, "Ingress", destination, source, port
    )
