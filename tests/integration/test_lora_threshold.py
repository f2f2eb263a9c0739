"""Threshold keys on a LoRA adapter vector, like on any other vector (issue 12, item 1).

Three in-process agents run a LoRA job of the offline text task under 2-of-3 threshold
keys: key generation on the devices, encrypted adapter uploads, threshold decryption;
every client ends with the same global adapters, and only adapters travelled.
"""

from __future__ import annotations

import threading

import torch

from fedhe_client.agent import ClientAgent
from fedhe_client.tasks.textgen import TextGenTask
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.mlbridge.flatten import flatten
from tests.integration.conftest import CLIENTS, Services

JOB = """
job: {name: lora-t, rounds: 1, seed: 3}
participants: {min_clients: 3, round_timeout_s: 60, wait_after_min_s: 30}
task: {name: textgen, params: {samples: 96, hidden: 32, layers: 2}}
training: {local_epochs: 1, batch_size: 8, lr: 0.02, optimizer: adam}
peft: {method: lora, r: 4, alpha: 16, target_modules: [query, value]}
keys: {mode: threshold, parties: 3, threshold: 2, preset: threshold-practical}
"""


_BUILD = threading.Lock()


class SerialTextGen(TextGenTask):
    """The text task, building its seeded base one agent at a time: the agents here are
    threads of one process, and torch's seed is per process (sites are processes)."""

    def build_model(self) -> torch.nn.Module:
        with _BUILD:
            torch.manual_seed(3)  # the job's seed, as each site process would have it
            return super().build_model()


def test_threshold_keys_on_lora_adapters(services: Services) -> None:
    services.agg_stub().SubmitJob(
        pb.SubmitJobRequest(job_yaml=JOB), metadata=services.metadata("admin")
    )
    agents: dict[str, ClientAgent] = {}
    results: dict[str, dict[str, float]] = {}
    errors: list[BaseException] = []

    def run(name: str, index: int) -> None:
        try:
            config = services.client_config(name, index, len(CLIENTS)).model_copy(
                update={
                    "job_id": "lora-t",
                    "task": f"{__name__}:SerialTextGen",
                    "state_dir": str(services.workdir / "clients" / name),
                }
            )
            agents[name] = ClientAgent(config)
            results[name] = agents[name].run()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c, i)) for i, c in enumerate(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=200)
    assert not errors, errors
    assert set(results) == set(CLIENTS)
    learner = agents[CLIENTS[0]].learner
    adapters = learner.manifest.total
    model_values = sum(p.numel() for p in learner.model.parameters())
    assert adapters < model_values // 5  # only adapters (and the head) travelled
    job = services.server.db.job("lora-t")
    assert job is not None and job.num_values == adapters
    row = services.server.db.round("lora-t", 1)
    assert row is not None and row.contributors == 3
    # Every client fused the same global adapters from the parties' shares.
    vectors = [flatten(agents[c].learner._travelling())[0] for c in CLIENTS]
    assert vectors[0].size == adapters
    for v in vectors[1:]:
        assert (abs(v - vectors[0]) <= 1e-9).all()
