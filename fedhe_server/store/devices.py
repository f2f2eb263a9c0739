"""Devices (client hosts): their latest load from heartbeats and when they were last seen."""

from __future__ import annotations

from dataclasses import dataclass

from fedhe_server.store.base import StoreBase


@dataclass(frozen=True)
class HostLoad:
    """A client host's load as its last heartbeat reported it (validated by the caller)."""

    cpu_percent: float
    ram_used: int
    ram_total: int
    gpu_name: str = ""
    gpu_memory_used: int = 0
    gpu_memory_total: int = 0
    gpu_util: float = -1.0  # -1: not measured


@dataclass(frozen=True)
class DeviceRow:
    """One client identity across all jobs: last seen, jobs, latest host load."""

    client_id: str
    last_seen: float
    last_job: str
    jobs: int
    host: HostLoad | None
    host_t: float | None


class DevicesStore(StoreBase):
    """Host load per client and the device list. queries of the state database."""

    def put_host_load(self, client_id: str, load: HostLoad, t: float) -> None:
        """Keep a client's latest host load (one row per client)."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT OR REPLACE INTO hosts VALUES (?,?,?,?,?,?,?,?,?)",
                (client_id, t, load.cpu_percent, load.ram_used, load.ram_total, load.gpu_name,
                 load.gpu_memory_used, load.gpu_memory_total, load.gpu_util),
            )  # fmt: skip

    def devices(self, limit: int) -> list[DeviceRow]:
        """Every client seen in any job (first ``limit`` by id), newest sighting per client."""
        rows = self.query(
            "SELECT c.client_id, MAX(COALESCE(c.last_seen, c.registered)), COUNT(*), "
            "(SELECT c2.job_id FROM clients c2 WHERE c2.client_id = c.client_id "
            " ORDER BY COALESCE(c2.last_seen, c2.registered) DESC LIMIT 1), "
            "h.t, h.cpu_percent, h.ram_used, h.ram_total, h.gpu_name, h.gpu_memory_used, "
            "h.gpu_memory_total, h.gpu_util FROM clients c LEFT JOIN hosts h "
            "ON h.client_id = c.client_id GROUP BY c.client_id ORDER BY c.client_id LIMIT ?",
            (limit,),
        )
        out = []
        for cid, seen, jobs, last_job, ht, cpu, used, total, gname, gused, gtotal, gutil in rows:
            host = None
            if ht is not None:
                host = HostLoad(
                    float(cpu), int(used), int(total), str(gname), int(gused), int(gtotal),
                    float(gutil),
                )  # fmt: skip
            seen_t = None if ht is None else float(ht)
            out.append(DeviceRow(str(cid), float(seen), str(last_job), int(jobs), host, seen_t))
        return out
