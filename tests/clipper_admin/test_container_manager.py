"""The cluster conventions shared by the container managers: choosing free ports."""

from __future__ import annotations

import socket

from clipper_admin.container_manager import find_unbound_port, find_unbound_ports


def test_ports_chosen_together_are_all_different_and_free() -> None:
    # Picked one by one, about 1 in 15 of 2,000 ports were repeats: two services of a Docker
    # cluster once got the same port, and its queries were answered by Prometheus.
    ports = find_unbound_ports([None] * 2000)
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))


def test_a_requested_port_is_kept_when_free_and_replaced_when_taken() -> None:
    free = find_unbound_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = find_unbound_ports([free, busy, free])
    assert ports[0] == free
    assert busy not in ports[1:]
    assert len(set(ports)) == 3
